// Command geocursor is the highly available Geo log cursor: `geocursor
// agent` runs one peer, `geocursor cluster status` shows the group. This
// package parses flags and formats output; the work happens in cluster,
// cursor and fsm.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// usageError marks errors that are the caller's to fix (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

const usage = `Usage: geocursor <command> [flags]

Commands:
  agent            run a peer of the geocursor Raft group
  cluster status   show the group: leader, members, lease, cursor and lag
  cluster remove   drop a member (a dead peer) from the group (operator)
  cursor show      the replicated cursor, its open gaps and the fence row
  cursor pause     stop processing after the batch in flight (all peers)
  cursor resume    let the peers process again
  cursor set       move the cursor to -event-id N (-force to move it back) (operator)
  gitlab handback  hand the site back to GitLab's geo-logcursor, open gaps included (operator; agents stopped)
  snapshot save    write the replicated state to FILE (operator)
  snapshot restore put a saved state into a fresh group (operator)
  tls ca create    create the cluster's certificate authority
  tls cert create  create a peer (-node ID) or client (-client NAME) certificate
  version          print the version

Run "geocursor <command> -h" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the exit status: 0 on success, 1 on
// a runtime failure, 2 on a usage or configuration error. Every failure
// prints one line on stderr that says what to fix.
func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout, stderr)
	if err == nil {
		return 0
	}
	if errors.Is(err, errHelp) {
		return 0
	}
	fmt.Fprintf(stderr, "geocursor: %v\n", err)
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

var errHelp = errors.New("help requested")

func dispatch(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usagef("no command given: run geocursor agent, cluster status, cursor pause|resume or version")
	}
	switch args[0] {
	case "agent":
		return runAgent(args[1:], stderr)
	case "cluster":
		if len(args) < 2 {
			return usagef("cluster needs a subcommand: geocursor cluster status")
		}
		switch args[1] {
		case "status":
			return runClusterStatus(args[2:], stdout, stderr)
		case "remove":
			return runClusterRemove(args[2:], stdout, stderr)
		}
		return usagef("unknown command \"cluster %s\": the cluster commands are: status, remove", args[1])
	case "cursor":
		if len(args) < 2 {
			return usagef("cursor needs a subcommand: geocursor cursor show, pause, resume or set -event-id N")
		}
		switch args[1] {
		case "pause", "resume":
			return runCursorPause(args[1], args[2:], stdout, stderr)
		case "show":
			return runCursorShow(args[2:], stdout, stderr)
		case "set":
			return runCursorSet(args[2:], stdout, stderr)
		}
		return usagef("unknown command \"cursor %s\": the cursor commands are: show, pause, resume, set", args[1])
	case "gitlab":
		if len(args) < 2 || args[1] != "handback" {
			return usagef("the gitlab commands are: geocursor gitlab handback -config FILE [-force]")
		}
		return runGitLabHandback(args[2:], stdout, stderr)
	case "snapshot":
		if len(args) < 2 {
			return usagef("snapshot needs a subcommand: geocursor snapshot save FILE or geocursor snapshot restore FILE")
		}
		switch args[1] {
		case "save":
			return runSnapshotSave(args[2:], stdout, stderr)
		case "restore":
			return runSnapshotRestore(args[2:], stdout, stderr)
		}
		return usagef("unknown command \"snapshot %s\": the snapshot commands are: save, restore", args[1])
	case "tls":
		if len(args) < 3 || args[2] != "create" || (args[1] != "ca" && args[1] != "cert") {
			return usagef("the tls commands are: geocursor tls ca create, geocursor tls cert create (-node ID | -client NAME)")
		}
		if args[1] == "ca" {
			return runTLSCACreate(args[3:], stdout, stderr)
		}
		return runTLSCertCreate(args[3:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, buildInfo())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return errHelp
	}
	return usagef("unknown command %q: the commands are agent, cluster status|remove, cursor show|pause|resume|set, gitlab handback, snapshot save|restore, tls ca create, tls cert create and version", args[0])
}
