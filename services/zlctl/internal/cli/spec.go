package cli

import (
	"github.com/spf13/cobra"

	"zlayer.dev/libs/spec"
)

func newSpecCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "spec",
		Short: "About the deployment file format",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "schema",
		Short: "Print the JSON Schema (draft 2020-12) of deployment files",
		Long: "Prints the JSON Schema of the deployment file format, for editors: with\n" +
			"yaml-language-server, put this line at the top of a deployment file:\n" +
			"  # yaml-language-server: $schema=./deployment.schema.json\n" +
			"after `zlctl spec schema > deployment.schema.json`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(spec.JSONSchema())
			return err
		},
	})
	return cmd
}
