module zlayer.dev/libs/testkit

go 1.26.0

require (
	github.com/klauspost/compress v1.20.4
	golang.org/x/crypto v0.58.0
)
