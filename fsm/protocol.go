package fsm

// Protocol versions (design section 14). A release speaks one protocol:
// the commands and fields of the log it applies, and the snapshot format
// it writes. Two releases in one group must read one log the same way, so
// a leader proposes what a node of an older protocol would apply
// differently only once every voter advertises the newer one (the
// cluster's gate), and every command that a protocol added is applied so
// that a node of the protocol before, which refuses it as unknown, differs
// only in fields it does not have.
//
//   - 0: the release ab96392, and every node that advertises nothing.
//   - 1: set_witness, set_removed and set_version (see AddedIn); members'
//     rows carry Witness, Version and Protocol; the state machine bounds a
//     restore's token and clock once every member row speaks 1.
const Protocol = 1

// SnapshotFormat is the layout of the snapshots this release writes, and
// the newest it reads. Protocol 1 still writes format 1: a node of
// protocol 0 reads it (it ignores the fields it does not know), as it must
// when a leader of this release sends it a snapshot. A later release that
// changes the layout raises it, and this one then refuses its snapshots
// (ErrNewerState) instead of misreading them.
const SnapshotFormat = 1

// AddedIn returns the protocol that introduced op: 0 for the commands of
// the release ab96392. A node of an earlier protocol refuses op as unknown
// and leaves its state alone, clock included; so Apply applies a command
// added after protocol 0 at the state's clock and never moves it.
func (o Op) AddedIn() int {
	switch o {
	case OpSetWitness, OpSetRemoved, OpSetVersion:
		return 1
	}
	return 0
}

// Speaks reports whether every row of the members table advertises
// protocol p or later (set_version). A row without an advertisement is
// protocol 0. The state machine uses it for the rules a protocol added, so
// that it applies the same as the nodes of the protocol before while any
// member may still be one; a table of no rows speaks every protocol.
func (s State) Speaks(p int) bool {
	for _, m := range s.Members {
		if m.Protocol < p {
			return false
		}
	}
	return true
}
