package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/geocursor/geocursor/api"
)

// defaultAddr is where `cluster status` looks when neither -addr nor
// $GEOCURSOR_ADDR is given: the default http_addr of a local agent.
const defaultAddr = "127.0.0.1:8470"

func runClusterStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster status", stderr)
	cf := addClientFlags(fs)
	format := fs.String("format", "table", "output format: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return usagef("cluster status: -format %q is not table or json", *format)
	}
	client, err := cf.client()
	if err != nil {
		return err
	}
	addr := cf.addr
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	body, err := client.StatusJSON(ctx, *addr)
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

// unreachable explains a request that failed: no agent at addr, a
// credential that is missing or wrong, or the agent's own error.
func unreachable(addr string, err error) error {
	switch {
	case errors.Is(err, api.ErrNotSent):
		return fmt.Errorf("no agent answered at %s (%v): is it running? pass -addr or set GEOCURSOR_ADDR to a member's http_addr", addr, err)
	case errors.Is(err, api.ErrUnauthorized):
		return fmt.Errorf("agent at %s asks for a token: pass -token or set %s (%v)", addr, envToken, err)
	case errors.Is(err, api.ErrPermissionDenied):
		return fmt.Errorf("agent at %s refused: %v (an operator command needs the operator token)", addr, err)
	}
	return fmt.Errorf("agent at %s: %w", addr, err)
}

func printStatusTable(w io.Writer, st api.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	if st.Leader != nil {
		p("Leader\t%s (raft %s, http %s)\n", safe(st.Leader.ID), safe(st.Leader.RaftAddr), safe(st.Leader.HTTPAddr))
	} else {
		p("Leader\tNONE: no leader known to %s (election under way, or a majority is down)\n", st.NodeID)
	}
	p("Raft\tterm %d, commit index %d, applied index %d (as seen by %s)\n", st.Term, st.CommitIndex, st.AppliedIndex, safe(st.NodeID))
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY: " + safe(st.NotReady)
	}
	p("Node\t%s runs geocursor %s (commit %s); %s\n", safe(st.NodeID), safe(st.Version), safe(st.Commit), ready)
	switch {
	case st.Lease.Holder != nil && st.Lease.ExpiresAt != nil:
		p("Lease\theld by %s, token %d, expires in %s\n", safe(*st.Lease.Holder), st.Lease.Token, st.Lease.ExpiresAt.Sub(now).Round(100*time.Millisecond))
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
	if c.SafeEventID != c.LastEventID {
		pos += fmt.Sprintf(" (safe up to %d)", c.SafeEventID)
	}
	if c.Paused {
		pos += ", PAUSED"
	}
	p("Cursor\t%s\n", pos)
	stats := fmt.Sprintf("%d events in %d batches, %d dead letters, %d gaps dropped",
		st.Stats.EventsProcessed, st.Stats.Batches, st.Stats.DeadLetters, st.Stats.GapsDropped)
	if n := st.Stats.EventsPrunedUnseen; n > 0 {
		stats += fmt.Sprintf(", %d PRUNED by the primary before they were processed", n)
	}
	p("Stats\t%s\n", stats)
	if d := st.Databases; d != nil {
		p("Databases\tsource %s; tracking %s (as seen by %s)\n", safe(d.Source), safe(d.Tracking), safe(st.NodeID))
	}
	if d := st.Delivery; d != nil {
		line := fmt.Sprintf("%d delivered, backlog %d, last event %d; Sidekiq's Redis %s; cache Redis %s",
			d.Delivered, d.Backlog, d.LastEventID, safe(d.SidekiqRedis), safe(d.CacheRedis))
		if d.RateLimit > 0 {
			line += fmt.Sprintf("; at most %g jobs/s", d.RateLimit)
		}
		if d.LostInRedis > 0 {
			line += fmt.Sprintf("; %d LOST by Redis", d.LostInRedis)
		}
		if d.TrackingError != "" {
			line += "; tracking database: " + safe(d.TrackingError)
		}
		if d.Blocked != "" {
			line += "; WAITING for GitLab's shared state"
		}
		p("Delivery\t%s\n", line)
	}
	if g := st.GitLab; g != nil {
		line := fmt.Sprintf("site %s is %s; GitLab's cursor lease %s", safe(g.SiteName), safe(g.Role), safe(g.CursorLease))
		if g.CursorLeaseHolder != "" {
			line += " (" + safe(g.CursorLeaseHolder) + ")"
		}
		if g.GitLabGaps != nil && *g.GitLabGaps > 0 {
			line += fmt.Sprintf("; %d gaps in GitLab's set", *g.GitLabGaps)
		}
		if g.SharedStateRedis != api.DatabaseOK {
			line += "; shared-state Redis: " + safe(g.SharedStateRedis)
		}
		if g.Blocked != "" {
			line += "; PROCESSING NOTHING: " + safe(g.Blocked)
		}
		p("GitLab\t%s\n", line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tVOTER\tREACHABLE\tRAFT ADDRESS\tHTTP ADDRESS\tVERSION\tPROTOCOL")
	for _, m := range st.Members {
		id := safe(m.ID)
		if m.ID == st.NodeID {
			id += " (this)"
		}
		// A row without a version is a node of protocol 0 (the release
		// ab96392), or one that has not advertised yet.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", id, safe(m.Role), yesNo(m.Voter), yesNo(m.Reachable), safe(m.RaftAddr), orDash(safe(m.HTTPAddr)),
			orDash(safe(m.Version)), m.Protocol)
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

// safe is s as a terminal should see it: a string with anything but
// printable characters (terminal escapes, newlines, tabs) is shown quoted
// with those escaped. Agents validate what they store, but the document
// comes over the network.
func safe(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
