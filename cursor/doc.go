// Package cursor processes the Geo event log: it reads batches from the
// primary's geo_event_log (Source), writes their effects into this site's
// tracking database in one transaction fenced by the lease token
// (Tracking), and runs the loop that takes turns with the other peers
// through the replicated lease (Loop, one grant at a time).
//
// It owns the exactly-once rules that involve the databases: the fence row
// is the truth about where processing stands, gaps are tracked until the
// late event appears or times out, and no write happens without a token at
// least as new as any the tracking database has seen. It does not own the
// lease rules (package fsm) or how commands reach the leader (package
// cluster): it sees both through the small Coordinator interface (ports.go).
// Handing jobs to GitLab's Redis is package delivery's; PostgreSQL
// connections and their errors are package internal/pgdb's.
//
// Where things are:
//
//	loop.go        the loop: waiting for work and a turn, acquiring, the idle probe
//	grant.go       one lease grant: the pipelined batches, fence handling, close
//	progress.go    recording a grant's progress in Raft (release-and-advance)
//	pipeline.go    a batch in the air, and the background fetch and stage
//	renewer.go     renewing the lease while a long batch runs
//	position.go    positions, gap arithmetic (NextPosition), comparing positions
//	fence.go       the fence row: claim, read, check
//	handback.go    handing the site back to GitLab's cursor, and taking it over again
//	tracking.go    the tracking store: staging and committing a batch
//	statements.go  the set-based SQL that writes a batch's effects
//	effects.go     what an event does to the tracking database (pure)
//	source.go      reading the event log
//	health.go      the databases' health for the status document
//	safedate.go    the safe cursor's date (GitLab's geo_cursor_last_event_timestamp)
//	metrics.go     the Prometheus collectors of the holder
//	clock.go       the state machine's clock, as this peer knows it
//	ports.go       the interfaces the loop needs
package cursor
