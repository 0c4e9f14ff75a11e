package cluster

import (
	"errors"

	"github.com/hashicorp/raft"
)

var (
	// ErrNoLeader means the group has no leader right now (an election is
	// under way, or a majority is down). It is retryable.
	ErrNoLeader = errors.New("no Raft leader")
	// ErrNotLeader means a command that only the leader serves reached a
	// follower. Node.Apply forwards instead of returning it.
	ErrNotLeader = errors.New("not the Raft leader")
	// ErrUnknownOutcome means leadership was lost after the command was
	// proposed: it may or may not have been applied.
	ErrUnknownOutcome = errors.New("outcome unknown: leadership lost while applying")
	// ErrJoinConflict means a join asked for a node ID that the group
	// already has at a different address.
	ErrJoinConflict = errors.New("node ID already in use")
	// ErrShutdown means the node is shutting down.
	ErrShutdown = errors.New("node is shutting down")
)

// mapRaftError turns raft's errors into this package's sentinels at one
// boundary, so callers never match on raft's.
func mapRaftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return ErrNotLeader
	case errors.Is(err, raft.ErrLeadershipLost):
		return ErrUnknownOutcome
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return err
}
