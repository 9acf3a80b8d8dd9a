package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// child is a process this lab command started. Processes of other lab
// commands are known only by their pid files.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	err    error         // its exit error (nil for status 0), set before exited closes
}

// startDetached starts cmd in its own session with its output going to
// logFile, so it outlives the lab command that started it (`lab up`). The
// child is reaped in the background while this process lives.
func startDetached(cmd *exec.Cmd, logFile string) (*child, error) {
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Args[0], err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	c := &child{cmd: cmd, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// writePID records pid in file; stopPID reads it back to stop the process.
func writePID(file string, pid int) error {
	if err := os.WriteFile(file, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}

// alive reports whether pid runs and its command line contains mark (the
// lab's state directory), so that a recycled pid is never signalled.
func alive(pid int, mark string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// A zombie has exited; only its parent's wait is missing.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			return false
		}
	}
	return bytes.Contains(cmdline, []byte(mark))
}

// stopPID sends SIGTERM to the process in pidFile (if it is still ours),
// waits up to grace for it to exit, then kills it; the pid file is removed.
func stopPID(ctx context.Context, pidFile, mark string, grace time.Duration) error {
	data, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		os.Remove(pidFile)
		return fmt.Errorf("stop: bad pid file %s", pidFile)
	}
	if alive(pid, mark) {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(grace)
		for alive(pid, mark) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(pid, mark) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100 && alive(pid, mark); i++ {
				time.Sleep(10 * time.Millisecond)
			}
			if alive(pid, mark) {
				return fmt.Errorf("stop %s: process %d does not exit", filepath.Base(pidFile), pid)
			}
			os.Remove(pidFile)
			return fmt.Errorf("stop %s: process %d ignored SIGTERM for %s and was killed (its rules may be left in namespaces that are about to be deleted)", filepath.Base(pidFile), pid, grace)
		}
	}
	return os.Remove(pidFile)
}

// killPID kills the process in pidFile (if it is still ours) with SIGKILL,
// giving it no chance to clean up, waits until it is gone and removes the
// pid file.
func killPID(pidFile, mark string) error {
	data, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("kill: not running")
	}
	if err != nil {
		return fmt.Errorf("kill: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("kill: bad pid file %s", pidFile)
	}
	if alive(pid, mark) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for deadline := time.Now().Add(5 * time.Second); alive(pid, mark); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("kill %s: process %d does not exit", filepath.Base(pidFile), pid)
			}
		}
	}
	return os.Remove(pidFile)
}
