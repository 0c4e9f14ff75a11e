package cluster

import (
	"errors"

	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/api"
)

// mapRaftError turns raft's errors into the API's at one boundary, so that
// callers never match on raft's.
func mapRaftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return api.ErrNotLeader
	case errors.Is(err, raft.ErrLeadershipLost):
		return api.ErrUnknownOutcome
	case errors.Is(err, raft.ErrRaftShutdown):
		return api.ErrShutdown
	}
	return err
}
