package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// runCursorPause runs `geocursor cursor pause|resume`: it asks any member
// to replicate the paused flag, which every peer obeys before its next
// acquire.
func runCursorPause(verb string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cursor "+verb, stderr)
	addr := fs.String("addr", defaultAgentAddr(), "HTTP address of any member (default $GEOCURSOR_ADDR, then "+defaultAddr+")")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+*addr+"/v1/cursor/"+verb, nil)
	if err != nil {
		return usagef("cursor %s: -addr %q: %v", verb, *addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("no agent answered at %s (%v): pass -addr or set GEOCURSOR_ADDR to a member's http_addr", *addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read answer from %s: %w", *addr, err)
	}
	var answer struct {
		Error *struct{ Message string } `json:"error"`
	}
	_ = json.Unmarshal(body, &answer)
	if resp.StatusCode != http.StatusOK || answer.Error != nil {
		msg := strings.TrimSpace(string(body))
		if answer.Error != nil {
			msg = answer.Error.Message
		}
		return fmt.Errorf("cursor %s via %s: %s", verb, *addr, msg)
	}
	if verb == "pause" {
		fmt.Fprintln(stdout, "Processing paused: no peer takes the lease until `geocursor cursor resume`; a batch in flight finishes.")
	} else {
		fmt.Fprintln(stdout, "Processing resumed.")
	}
	return nil
}
