package cluster

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// watchedLogStore is the Raft log store with its last write failure kept,
// for readiness: a follower whose disk is full fails to store every entry
// the leader sends, logs it, and otherwise goes on answering as if it were
// well. Only a successful write clears the failure.
type watchedLogStore struct {
	raft.LogStore

	mu       sync.Mutex
	failure  error
	failedAt time.Time
}

func (s *watchedLogStore) StoreLog(l *raft.Log) error {
	return s.record(s.LogStore.StoreLog(l))
}

func (s *watchedLogStore) StoreLogs(logs []*raft.Log) error {
	return s.record(s.LogStore.StoreLogs(logs))
}

func (s *watchedLogStore) record(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failure, s.failedAt = err, time.Now()
	} else {
		s.failure = nil
	}
	return err
}

// writeFailure is the last write's error, nil when it succeeded.
func (s *watchedLogStore) writeFailure() (error, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failure, s.failedAt
}
