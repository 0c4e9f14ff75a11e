package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// runCursorShow is `geocursor cursor show [-format table|json]`.
func runCursorShow(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cursor show", stderr)
	cf := addClientFlags(fs)
	format := fs.String("format", "table", "output format: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return usagef("cursor show: -format %q is not table or json", *format)
	}
	client, err := cf.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := client.Cursor(ctx, *cf.addr)
	if err != nil {
		return unreachable(*cf.addr, err)
	}
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	pos := fmt.Sprintf("last event %d", st.LastEventID)
	if st.LastEventDate != nil {
		pos += " at " + st.LastEventDate.UTC().Format(time.RFC3339Nano)
	}
	fmt.Fprintf(stdout, "Cursor     %s; safe up to %d", pos, st.SafeEventID)
	if st.Paused {
		fmt.Fprint(stdout, "; PAUSED")
	}
	fmt.Fprintln(stdout)
	var ids []string
	for i, g := range st.Gaps {
		if i == 20 {
			ids = append(ids, fmt.Sprintf("... (%d in all)", len(st.Gaps)))
			break
		}
		ids = append(ids, fmt.Sprint(g.ID))
	}
	if len(ids) == 0 {
		ids = []string{"none"}
	}
	fmt.Fprintf(stdout, "Open gaps  %s\n", strings.Join(ids, " "))
	if st.Lease.Holder != nil {
		fmt.Fprintf(stdout, "Lease      held by %s, token %d\n", safe(*st.Lease.Holder), st.Lease.Token)
	} else {
		fmt.Fprintf(stdout, "Lease      free (last token %d)\n", st.Lease.Token)
	}
	if f := st.Fence; f != nil {
		fmt.Fprintf(stdout, "Fence row  event %d, %d open gaps, token %d (the tracking database, as this node reads it)\n", f.LastEventID, f.OpenGaps, f.Token)
	} else {
		fmt.Fprintln(stdout, "Fence row  unknown: this node has no tracking database (a witness)")
	}
	return nil
}

// runCursorSet is `geocursor cursor set -event-id N [-force]` (operator).
func runCursorSet(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cursor set", stderr)
	cf := addClientFlags(fs)
	id := fs.Int64("event-id", -1, "the event ID the cursor moves to: processing goes on after it")
	force := fs.Bool("force", false, "allow moving the cursor back (the events after it are processed and delivered again), or beyond the newest event in the source (every event up to it is skipped as it comes)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *id < 0 {
		return usagef("cursor set: -event-id is required (0 or more): the event the cursor moves to")
	}
	client, err := cf.client()
	if err != nil {
		return err
	}
	// The agent waits for its turn and the lease, up to a minute.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	resp, err := client.SetCursor(ctx, *cf.addr, api.CursorSetRequest{EventID: *id, Force: *force})
	if err != nil {
		if errors.Is(err, api.ErrNotFound) || errors.Is(err, api.ErrBadRequest) || errors.Is(err, fsm.ErrBadCommand) {
			return fmt.Errorf("cursor set: %w", err)
		}
		return unreachable(*cf.addr, err)
	}
	switch {
	case resp.To == resp.From:
		fmt.Fprintf(stdout, "The cursor was at %d already; open gaps closed: %d.\n", resp.To, resp.GapsDropped)
	case resp.To > resp.From:
		fmt.Fprintf(stdout, "Cursor moved forwards from %d to %d under token %d: %d events skipped, %d open gaps given up.\n",
			resp.From, resp.To, resp.Token, resp.Skipped, resp.GapsDropped)
	default:
		fmt.Fprintf(stdout, "Cursor moved back from %d to %d under token %d: %d processed events will be processed and delivered again.\n",
			resp.From, resp.To, resp.Token, resp.Replayed)
	}
	return nil
}
