// Package cluster runs one geocursor peer's share of the Raft group: the
// stores and transport, bootstrap and join, the HTTP API, and the single
// path (Node.Apply) by which every state change reaches the leader, whoever
// asks. It knows nothing of PostgreSQL or event processing: the cursor loop
// drives it through Apply and Watch.
package cluster
