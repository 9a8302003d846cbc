module zlayer.dev/libs/spec

go 1.26.0

require (
	github.com/google/go-cmp v0.7.0
	github.com/santhosh-tekuri/jsonschema/v6 v6.0.3
	gopkg.in/yaml.v3 v3.0.1
	zlayer.dev/libs/errkind v0.0.0
)

require golang.org/x/text v0.14.0 // indirect

replace zlayer.dev/libs/errkind => ../errkind
