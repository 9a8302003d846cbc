module zlayer.dev/libs/errkind

go 1.26.0
