package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/geocursor/geocursor/api"
)

// defaultAddr is where `cluster status` looks when neither -addr nor
// $GEOCURSOR_ADDR is given: the default http_addr of a local agent.
const defaultAddr = "127.0.0.1:8470"

func runClusterStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster status", stderr)
	addr := fs.String("addr", defaultAgentAddr(), "HTTP address of any member (default $GEOCURSOR_ADDR, then "+defaultAddr+")")
	format := fs.String("format", "table", "output format: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return usagef("cluster status: -format %q is not table or json", *format)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	body, err := newClient().StatusJSON(ctx, *addr)
	if err != nil {
		return unreachable(*addr, err)
	}
	if *format == "json" {
		_, err := stdout.Write(append(bytes.TrimSpace(body), '\n'))
		return err
	}
	var st api.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("decode status from %s: %w", *addr, err)
	}
	return printStatusTable(stdout, st, time.Now())
}

// newClient is the API client of the CLI commands.
func newClient() *api.Client {
	return api.NewClient(api.ClientOptions{})
}

// unreachable explains a request that failed: no agent at addr, or the
// agent's own error.
func unreachable(addr string, err error) error {
	if errors.Is(err, api.ErrNotSent) {
		return fmt.Errorf("no agent answered at %s (%v): is it running? pass -addr or set GEOCURSOR_ADDR to a member's http_addr", addr, err)
	}
	return fmt.Errorf("agent at %s: %w", addr, err)
}

// defaultAgentAddr is $GEOCURSOR_ADDR, else the default http_addr.
func defaultAgentAddr() string {
	if a := os.Getenv("GEOCURSOR_ADDR"); a != "" {
		return a
	}
	return defaultAddr
}

func printStatusTable(w io.Writer, st api.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	if st.Leader != nil {
		p("Leader\t%s (raft %s, http %s)\n", st.Leader.ID, st.Leader.RaftAddr, st.Leader.HTTPAddr)
	} else {
		p("Leader\tNONE: no leader known to %s (election under way, or a majority is down)\n", st.NodeID)
	}
	p("Raft\tterm %d, commit index %d, applied index %d (as seen by %s)\n", st.Term, st.CommitIndex, st.AppliedIndex, st.NodeID)
	switch {
	case st.Lease.Holder != nil && st.Lease.ExpiresAt != nil:
		p("Lease\theld by %s, token %d, expires in %s\n", *st.Lease.Holder, st.Lease.Token, st.Lease.ExpiresAt.Sub(now).Round(100*time.Millisecond))
	default:
		p("Lease\tfree (last token %d)\n", st.Lease.Token)
	}
	c := st.Cursor
	pos := fmt.Sprintf("last event %d", c.LastEventID)
	if c.LastEventDate != nil {
		pos += " at " + c.LastEventDate.UTC().Format(time.RFC3339Nano)
	}
	if c.SourceLastEventID != nil {
		pos += fmt.Sprintf(", source head %d", *c.SourceLastEventID)
	}
	if c.LagEvents != nil && c.LagSeconds != nil {
		pos += fmt.Sprintf(", lag %d events / %.1fs", *c.LagEvents, *c.LagSeconds)
	}
	pos += fmt.Sprintf(", %d open gaps", c.OpenGaps)
	if c.Paused {
		pos += ", PAUSED"
	}
	p("Cursor\t%s\n", pos)
	p("Stats\t%d events in %d batches, %d dead letters, %d gaps dropped\n",
		st.Stats.EventsProcessed, st.Stats.Batches, st.Stats.DeadLetters, st.Stats.GapsDropped)
	if d := st.Databases; d != nil {
		p("Databases\tsource %s; tracking %s (as seen by %s)\n", d.Source, d.Tracking, st.NodeID)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tVOTER\tREACHABLE\tRAFT ADDRESS\tHTTP ADDRESS")
	for _, m := range st.Members {
		id := m.ID
		if m.ID == st.NodeID {
			id += " (this)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", id, m.Role, yesNo(m.Voter), yesNo(m.Reachable), m.RaftAddr, orDash(m.HTTPAddr))
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
