module zlayer.dev/libs/spec

go 1.26.0
