// Package e2e tests ZLayer's built binaries together, as a user runs them:
// devctl starts a node, zlctl, grpcurl and Python stubs talk to it, systemd
// checks the units. `make test` builds bin/ first and points ZLAYER_BIN_DIR
// at it; the tests need root and the packages of scripts/install-deps.sh.
package e2e
