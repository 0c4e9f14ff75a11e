package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// runCursorPause runs `geocursor cursor pause|resume`: it asks any member
// to replicate the paused flag, which every peer obeys before its next
// acquire.
func runCursorPause(verb string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cursor "+verb, stderr)
	cf := addClientFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	client, err := cf.client()
	if err != nil {
		return err
	}
	addr := cf.addr
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := client.SetPaused(ctx, *addr, verb == "pause")
	if err != nil {
		return unreachable(*addr, err)
	}
	if res.Err != nil {
		return fmt.Errorf("cursor %s via %s: %w", verb, *addr, res.Err)
	}
	if verb == "pause" {
		fmt.Fprintln(stdout, "Processing paused: no peer takes the lease until `geocursor cursor resume`; a batch in flight finishes.")
	} else {
		fmt.Fprintln(stdout, "Processing resumed.")
	}
	return nil
}
