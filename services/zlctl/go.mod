module zlayer.dev/services/zlctl

go 1.26.0
