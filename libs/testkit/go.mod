module zlayer.dev/libs/testkit

go 1.26.0
