package main

import "errors"

// undoStack collects the steps that take back what a setup did, so a
// setup that fails halfway can still be undone.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

// run takes the steps back, newest first, and returns every error.
func (u *undoStack) run() error {
	var errs []error
	for i := len(*u) - 1; i >= 0; i-- {
		if err := (*u)[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
