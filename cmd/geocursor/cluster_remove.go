package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/geocursor/geocursor/api"
)

// runClusterRemove is `geocursor cluster remove -id ID [-force]`: drop a
// member (a dead peer) from the group. The leader refuses to remove the
// last voter, and without -force a removal after which the voters that
// answer are no majority.
func runClusterRemove(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster remove", stderr)
	cf := addClientFlags(fs)
	id := fs.String("id", "", "the node ID of the member to remove")
	force := fs.Bool("force", false, "remove it even if the voters left that answer are no majority (the group then waits for them)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *id == "" {
		return usagef("cluster remove: -id is required (the node ID of the member to remove, as cluster status lists it)")
	}
	client, err := cf.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := api.RemoveRequest{NodeID: *id, Force: *force}
	addr := *cf.addr
	resp, err := client.Remove(ctx, addr, req)
	if errors.Is(err, api.ErrNotLeader) {
		// Only the leader removes; the operator's credentials go to it
		// directly rather than through a peer.
		st, serr := client.Status(ctx, addr)
		if serr != nil || st.Leader == nil || st.Leader.HTTPAddr == "" {
			return fmt.Errorf("cluster remove: %s does not lead and knows no leader: try again once the group has one", addr)
		}
		addr = st.Leader.HTTPAddr
		resp, err = client.Remove(ctx, addr, req)
	}
	switch {
	case errors.Is(err, api.ErrQuorum), errors.Is(err, api.ErrNotFound):
		return fmt.Errorf("cluster remove: %w", err)
	case err != nil:
		return unreachable(addr, err)
	}
	fmt.Fprintf(stdout, "Removed %s from the group; %d voters left. A node that comes back under this ID must join again (-join).\n", *id, resp.Voters)
	return nil
}
