module zlayer.dev/services/devctl

go 1.26.0
