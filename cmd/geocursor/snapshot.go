package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// runSnapshotSave is `geocursor snapshot save FILE` (operator): the
// replicated state from the leader, as JSON.
func runSnapshotSave(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot save", stderr)
	cf := addClientFlags(fs)
	path, err := fileAndFlags(fs, args)
	if err != nil {
		return err
	}
	if path == "" {
		return usagef("snapshot save: give one FILE to write the snapshot to")
	}
	client, err := cf.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	addr := *cf.addr
	snap, err := client.Snapshot(ctx, addr)
	if errors.Is(err, api.ErrNotLeader) {
		st, serr := client.Status(ctx, addr)
		if serr != nil || st.Leader == nil || st.Leader.HTTPAddr == "" {
			return fmt.Errorf("snapshot save: %s does not lead and knows no leader: try again once the group has one", addr)
		}
		addr = st.Leader.HTTPAddr
		snap, err = client.Snapshot(ctx, addr)
	}
	if err != nil {
		return unreachable(addr, err)
	}
	b, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return err
	}
	// Written whole or not at all: a temporary file renamed into place.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".geocursor-snapshot-*")
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("snapshot save: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	fmt.Fprintf(stdout, "Saved the replicated state at Raft index %d from %s to %s: cursor at %d, %d open gaps, token %d (members are not saved).\n",
		snap.Index, snap.TakenFrom, path, snap.Cursor.LastEventID, len(snap.Gaps), snap.Token)
	return nil
}

// runSnapshotRestore is `geocursor snapshot restore FILE` (operator):
// into a group that has processed nothing, through a processing agent.
func runSnapshotRestore(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot restore", stderr)
	cf := addClientFlags(fs)
	path, err := fileAndFlags(fs, args)
	if err != nil {
		return err
	}
	if path == "" {
		return usagef("snapshot restore: give the FILE that snapshot save wrote")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	var snap api.Snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return fmt.Errorf("snapshot restore: %s is not a snapshot: %w", path, err)
	}
	client, err := cf.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	resp, err := client.Restore(ctx, *cf.addr, snap)
	if err != nil {
		if errors.Is(err, api.ErrNotFound) || errors.Is(err, api.ErrBadRequest) || errors.Is(err, fsm.ErrBadCommand) || errors.Is(err, fsm.ErrNotFresh) {
			return fmt.Errorf("snapshot restore: %w", err)
		}
		return unreachable(*cf.addr, err)
	}
	fmt.Fprintf(stdout, "Restored: the cursor is at %d; the next grant takes a token above %d and checks the tracking database's fence row.\n",
		resp.LastEventID, resp.Token)
	return nil
}

// fileAndFlags parses args, which hold one FILE before, after or among the
// flags, and returns FILE ("" when there is none).
func fileAndFlags(fs *flag.FlagSet, args []string) (string, error) {
	var file string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", errHelp
			}
			return "", usagef("%s: %v", fs.Name(), err)
		}
		if fs.NArg() == 0 {
			return file, nil
		}
		if file != "" {
			return "", usagef("%s: one FILE only, got %q and %q", fs.Name(), file, fs.Arg(0))
		}
		file, args = fs.Arg(0), fs.Args()[1:]
	}
}
