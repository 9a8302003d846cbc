module zlayer.dev/services/agent

go 1.26.0
