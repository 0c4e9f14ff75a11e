// Package fsmv0 is the state machine of the release ab96392, the last
// release of protocol 0, as it was: its commands.go, apply.go, state.go,
// errors.go and snapshot.go, unchanged but for the package name. Tests
// apply a log to it and to package fsm side by side, to show that the two
// releases read one log the same way (design section 14). Never edit it
// but to copy that release again.
package fsmv0
