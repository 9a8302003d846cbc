package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
)

func newExecCmd(g *globals) *cobra.Command {
	var (
		interactive, tty bool
		env              []string
		workdir          string
	)
	cmd := &cobra.Command{
		Use:   "exec TARGET -- CMD [ARG...]",
		Short: "Run a command in a running container",
		Long: "Runs CMD inside a running container, with its user, capabilities and\n" +
			"seccomp profile; zlctl exits with the command's exit code. -i passes stdin,\n" +
			"-t gives the command a terminal (use both for a shell: zlctl exec -it ID -- sh).\n" +
			"TARGET is a container id or deployment/service[/index], on any node of the\n" +
			"cluster (see zlctl logs).",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return errors.New("usage: zlctl exec TARGET -- CMD [ARG...]")
			}
			path, err := g.reach(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer path.close()
			start := &agentv1.ExecStart{Args: args[1:], Env: env, Cwd: workdir, Tty: tty}
			in := cmd.InOrStdin()
			inFile, isFile := in.(*os.File)
			if tty && isFile && term.IsTerminal(int(inFile.Fd())) {
				if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
					start.Size = &agentv1.TerminalSize{Rows: uint32(h), Cols: uint32(w)}
				}
				old, err := term.MakeRaw(int(inFile.Fd()))
				if err != nil {
					return fmt.Errorf("terminal: %w", err)
				}
				defer term.Restore(int(inFile.Fd()), old)
			}
			st, err := path.exec(cmd.Context(), args[0])
			if err != nil {
				return g.rpcError(path.caller, err)
			}
			send := make(chan *agentv1.ExecRequest, 16)
			send <- &agentv1.ExecRequest{Input: &agentv1.ExecRequest_Start{Start: start}}
			go func() { // the only sender on st
				for m := range send {
					if st.send(m) != nil {
						return
					}
				}
			}()
			if interactive {
				go func() {
					buf := make([]byte, 32<<10)
					for {
						n, err := in.Read(buf)
						if n > 0 {
							send <- &agentv1.ExecRequest{Input: &agentv1.ExecRequest_Stdin{Stdin: append([]byte(nil), buf[:n]...)}}
						}
						if err != nil {
							send <- &agentv1.ExecRequest{Input: &agentv1.ExecRequest_CloseStdin{CloseStdin: true}}
							return
						}
					}
				}()
			} else {
				send <- &agentv1.ExecRequest{Input: &agentv1.ExecRequest_CloseStdin{CloseStdin: true}}
			}
			if tty && isFile && term.IsTerminal(int(inFile.Fd())) {
				winch := make(chan os.Signal, 1)
				signal.Notify(winch, syscall.SIGWINCH)
				defer signal.Stop(winch)
				go func() {
					for range winch {
						if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
							send <- &agentv1.ExecRequest{Input: &agentv1.ExecRequest_Resize{Resize: &agentv1.TerminalSize{Rows: uint32(h), Cols: uint32(w)}}}
						}
					}
				}()
			}
			for {
				m, err := st.recv()
				if errors.Is(err, io.EOF) {
					return fmt.Errorf("exec: the %s ended the stream without an exit code", path.caller)
				}
				if err != nil {
					return g.rpcError(path.caller, err)
				}
				switch o := m.GetOutput().(type) {
				case *agentv1.ExecResponse_Stdout:
					cmd.OutOrStdout().Write(o.Stdout)
				case *agentv1.ExecResponse_Stderr:
					cmd.ErrOrStderr().Write(o.Stderr)
				case *agentv1.ExecResponse_ExitCode:
					if o.ExitCode != 0 {
						return &exitError{code: int(o.ExitCode)}
					}
					return nil
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "pass stdin to the command")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "give the command a terminal")
	cmd.Flags().StringArrayVarP(&env, "env", "e", nil, "set KEY=value in the command's environment (repeatable)")
	cmd.Flags().StringVarP(&workdir, "workdir", "w", "", "working directory inside the container")
	return cmd
}
