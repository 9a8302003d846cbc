module zlayer.dev/libs/testkit

go 1.26.0

require (
	github.com/klauspost/compress v1.20.4
	github.com/vishvananda/netlink v1.3.1
	golang.org/x/crypto v0.58.0
)

require (
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
