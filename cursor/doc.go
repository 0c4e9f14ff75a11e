// Package cursor processes the Geo event log: it reads batches from the
// primary's geo_event_log (Source), writes their effects into this site's
// tracking database in one transaction fenced by the lease token
// (Tracking), and runs the loop that takes turns with the other peers
// through the replicated lease (Loop).
//
// It owns the exactly-once rules that involve the databases: the fence row
// is the truth about where processing stands, gaps are tracked until the
// late event appears or times out, and no write happens without a token at
// least as new as any the tracking database has seen. It does not own the
// lease rules (package fsm) or how commands reach the leader (package
// cluster): it sees both through the small Coordinator interface.
package cursor
