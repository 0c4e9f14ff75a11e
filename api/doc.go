// Package api is geocursor's HTTP wire: the documents the agents serve
// (the status document, health and readiness), the request and answer
// bodies of every endpoint, the one table of error codes with their HTTP
// statuses, and the one Client through which anything talks to an agent:
// the CLI, forwarding between peers, the member probes of the status
// document, the test harness and the scripts.
//
// It is a leaf: it imports fsm for the commands and results it carries,
// and nothing else of geocursor. Fields of the documents may be added,
// never renamed; codes never change.
package api
