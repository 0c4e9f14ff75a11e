// Package chaos runs a geocursor group under faults on one Linux machine and
// checks what it did: every peer is a real `geocursor agent` process in its
// own network namespace, joined to the others through veth pairs on a
// bridge the package creates; PostgreSQL stays in the root namespace behind
// small TCP proxies on the bridge address.
//
// A nemesis (Kind) is one fault: SIGKILL and restart, SIGSTOP past the
// lease or the election timeout, a network partition (DROP rules or
// blackhole routes inside the namespaces), a peer cut off from the tracking
// database (its proxy stops forwarding), a lost majority, a restart of the
// tracking database, a wiped data directory. Cluster.Inject runs one; a
// Schedule runs them at random.
//
// Cluster.Finish heals everything, waits for the cursor to reach the
// source's head and checks the outcome: every committed source event
// exactly once in geo_jobs ∪ geo_dead_letters, the lease guarantees, and
// the linearizability of every command the peers issued (their
// GEOCURSOR_HISTORY_FILE histories, reconciled with the Raft log) with
// internal/linearize.
//
// It needs root, iproute2 and PostgreSQL's server binaries; Available says
// what is missing. Every namespace, link and process it creates carries a
// name prefix unique to the run and is removed by Close; Sweep removes what
// a run that died left behind. It must not touch anything it did not
// create.
package chaos
