package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/geocursor/geocursor/api"
)

// runClusterRemove is `geocursor cluster remove -id ID [-force | -undo]`:
// drop a member (a dead peer) from the group, and keep its node ID out
// until an operator lets it back in with -undo (design section 10). The
// leader refuses to remove the last voter, and without -force a removal
// after which the voters that answer are no majority.
func runClusterRemove(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster remove", stderr)
	cf := addClientFlags(fs)
	id := fs.String("id", "", "the node ID of the member to remove")
	force := fs.Bool("force", false, "remove it even if the voters left that answer are no majority (the group then waits for them)")
	undo := fs.Bool("undo", false, "let a removed node ID back in: it may join again with the operator's consent")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *id == "" {
		return usagef("cluster remove: -id is required (the node ID of the member to remove, as cluster status lists it)")
	}
	if *undo && *force {
		return usagef("cluster remove: -undo lets a removed node ID back in and takes no -force")
	}
	client, err := cf.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := api.RemoveRequest{NodeID: *id, Force: *force, Undo: *undo}
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
	if *undo {
		fmt.Fprintf(stdout, "Let %s back in: a node with this ID may join again (-join, with the join or operator token).\n", *id)
		return nil
	}
	fmt.Fprintf(stdout, "Removed %s from the group; %d voters left. Its node ID stays out until you let it back in with `geocursor cluster remove -id %s -undo`.\n", *id, resp.Voters, *id)
	return nil
}
