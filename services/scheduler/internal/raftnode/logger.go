package raftnode

import (
	"fmt"

	"go.uber.org/zap"
)

// raftLogger adapts zap to raft.Logger. raft's Fatal and Panic become zap's,
// which end the process: raft calls them only on broken invariants.
type raftLogger struct{ s *zap.SugaredLogger }

func (l *raftLogger) Debug(v ...any)                 { l.s.Debug(fmt.Sprint(v...)) }
func (l *raftLogger) Debugf(format string, v ...any) { l.s.Debugf(format, v...) }
func (l *raftLogger) Info(v ...any)                  { l.s.Info(fmt.Sprint(v...)) }
func (l *raftLogger) Infof(format string, v ...any)  { l.s.Infof(format, v...) }
func (l *raftLogger) Warning(v ...any)               { l.s.Warn(fmt.Sprint(v...)) }
func (l *raftLogger) Warningf(format string, v ...any) {
	l.s.Warnf(format, v...)
}
func (l *raftLogger) Error(v ...any)                 { l.s.Error(fmt.Sprint(v...)) }
func (l *raftLogger) Errorf(format string, v ...any) { l.s.Errorf(format, v...) }
func (l *raftLogger) Fatal(v ...any)                 { l.s.Fatal(fmt.Sprint(v...)) }
func (l *raftLogger) Fatalf(format string, v ...any) { l.s.Fatalf(format, v...) }
func (l *raftLogger) Panic(v ...any)                 { l.s.Panic(fmt.Sprint(v...)) }
func (l *raftLogger) Panicf(format string, v ...any) { l.s.Panicf(format, v...) }
