// Package gitlab is GitLab's shared state around the log cursor, as a
// Geo secondary site has it (design section 13): the exclusive lease that
// GitLab's own geo-logcursor runs under, the sorted set of event IDs it
// skipped (geo:event_log:gaps), and the site's role (geo_nodes.primary).
//
// It owns the interlock with geo-logcursor (the group holds GitLab's
// cursor lease key while it may process), the gate that says whether this
// site may process and deliver now, and the removal of adopted gaps from
// GitLab's set. It must not process events or deliver jobs (packages
// cursor and delivery ask its gate), nor write the tracking database.
//
// Where things are:
//
//	lease.go    GitLab's cursor lease key: claim, renew, release
//	gaps.go     GitLab's gap set: read, remove what the group owns, write back
//	role.go     the site's role, read from the source's geo_nodes
//	watcher.go  the Watcher: the gate, the status object, readiness
package gitlab
