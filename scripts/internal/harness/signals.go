package harness

import (
	"os"
	"os/signal"
	"syscall"
)

// HandleSignals calls stop at the first SIGINT, SIGTERM or SIGHUP, and
// hardExit at a later SIGINT or SIGTERM: the second Ctrl-C of someone who
// will not wait.
//
// The script also asks for a SIGHUP when its parent dies. Under `go run`,
// a SIGTERM to the go command kills it without passing the signal on; the
// SIGHUP lets the script stop what it started anyway. The kernel repeats
// that signal as each of the parent's threads exits, which is why a later
// SIGHUP is ignored instead of counting as a second signal.
func HandleSignals(stop, hardExit func(os.Signal)) (warning error) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	warning = signalOnParentDeath(syscall.SIGHUP)
	go func() {
		stop(<-sigs)
		for sig := range sigs {
			if sig != syscall.SIGHUP {
				hardExit(sig)
				return
			}
		}
	}()
	return warning
}
