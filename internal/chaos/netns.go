package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"
)

// namePrefix starts the name of every namespace and link this package
// creates: "gcx" and a run ID of four hex digits, then "-" and a role.
const namePrefix = "gcx"

var ownedName = regexp.MustCompile(`^gcx([0-9a-f]{4})-`)

// Partition mechanisms.
const (
	// ModeIPTables drops a peer's packets with iptables rules inside the
	// namespaces on both sides.
	ModeIPTables = "iptables"
	// ModeRoute installs blackhole routes inside the namespaces on both
	// sides: iproute2 only.
	ModeRoute = "route"
)

// EnvPartitionMode forces a partition mechanism (iptables or route);
// by default iptables is used when it works, else routes.
const EnvPartitionMode = "GEOCURSOR_CHAOS_PARTITION"

// Available returns nil when this machine can run the chaos harness, or an
// error that says what is missing.
func Available() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("the chaos harness needs Linux network namespaces, not %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		return errors.New("the chaos harness needs root (it creates network namespaces, veth pairs and a bridge); run as root, e.g. sudo -E go test ./internal/chaos")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the chaos harness needs iproute2's ip command: apt-get install -y iproute2")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	probe := fmt.Sprintf("gcx-probe-%d", os.Getpid())
	if err := ipRun(ctx, "netns", "add", probe); err != nil {
		return fmt.Errorf("network namespaces are not supported here: %w", err)
	}
	defer ipRun(context.WithoutCancel(ctx), "netns", "del", probe) //nolint:errcheck // best effort
	link := fmt.Sprintf("gcxp%d", os.Getpid()%10000000)
	if err := ipRun(ctx, "link", "add", link, "type", "bridge"); err != nil {
		return fmt.Errorf("bridges are not supported here: %w", err)
	}
	if err := ipRun(ctx, "link", "del", link); err != nil {
		return fmt.Errorf("remove probe bridge %s: %w", link, err)
	}
	return nil
}

// Host is one peer's network namespace.
type Host struct {
	Index int
	// NS is the namespace's name, for `ip netns exec`.
	NS string
	// IP is the peer's address on the bridge.
	IP       string
	hostLink string // veth end on the bridge
	nsLink   string // veth end inside NS
}

// Net is the test network: a bridge in the root namespace whose address
// (HostIP) serves the database proxies, and one namespace per peer.
type Net struct {
	ID     string
	Bridge string
	HostIP string
	Hosts  []*Host
	// Mode is how partitions are made: ModeIPTables or ModeRoute.
	Mode string

	logf func(format string, args ...any)

	mu   sync.Mutex
	cuts map[[2]int]bool
	// dbCut etc. live in the proxies; Net only knows peer-to-peer cuts.
}

// NewNet creates a bridge and n namespaces connected to it. It sweeps what
// dead runs left behind first. Close removes everything it created.
func NewNet(ctx context.Context, n int, logf func(format string, args ...any)) (_ *Net, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	unlock, err := lockOwners()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := Sweep(ctx, logf); err != nil {
		logf("chaos: sweep of leftovers: %v", err)
	}
	subnet, err := freeSubnet(ctx)
	if err != nil {
		return nil, err
	}
	id, err := claimID()
	if err != nil {
		return nil, err
	}
	nt := &Net{
		ID:     id,
		Bridge: namePrefix + id + "-br",
		HostIP: fmt.Sprintf("10.77.%d.1", subnet),
		logf:   logf,
		cuts:   map[[2]int]bool{},
	}
	defer func() {
		if err != nil {
			if cerr := nt.Close(); cerr != nil {
				logf("chaos: clean up after failed setup: %v", cerr)
			}
		}
	}()
	steps := [][]string{
		{"link", "add", nt.Bridge, "type", "bridge"},
		{"addr", "add", nt.HostIP + "/24", "dev", nt.Bridge},
		{"link", "set", nt.Bridge, "up"},
	}
	for i := 1; i <= n; i++ {
		h := &Host{
			Index:    i,
			NS:       fmt.Sprintf("%s%s-n%d", namePrefix, id, i),
			IP:       fmt.Sprintf("10.77.%d.%d", subnet, 10+i),
			hostLink: fmt.Sprintf("%s%s-h%d", namePrefix, id, i),
			nsLink:   fmt.Sprintf("%s%s-p%d", namePrefix, id, i),
		}
		nt.Hosts = append(nt.Hosts, h)
		steps = append(steps,
			[]string{"netns", "add", h.NS},
			[]string{"link", "add", h.hostLink, "type", "veth", "peer", "name", h.nsLink, "netns", h.NS},
			[]string{"link", "set", h.hostLink, "master", nt.Bridge},
			[]string{"link", "set", h.hostLink, "up"},
			[]string{"-n", h.NS, "link", "set", "lo", "up"},
			[]string{"-n", h.NS, "addr", "add", h.IP + "/24", "dev", h.nsLink},
			[]string{"-n", h.NS, "link", "set", h.nsLink, "up"},
		)
	}
	for _, s := range steps {
		if err := ipRun(ctx, s...); err != nil {
			return nil, fmt.Errorf("set up the test network: %w", err)
		}
	}
	nt.Mode, err = partitionMode(ctx, nt.Hosts[0])
	if err != nil {
		return nil, err
	}
	logf("chaos: network %s: bridge %s at %s, %d namespaces, partitions by %s", id, nt.Bridge, nt.HostIP, n, nt.Mode)
	return nt, nil
}

// partitionMode picks iptables when it works inside a namespace, else
// blackhole routes, unless EnvPartitionMode says otherwise.
func partitionMode(ctx context.Context, h *Host) (string, error) {
	switch m := os.Getenv(EnvPartitionMode); m {
	case ModeRoute:
		return ModeRoute, nil
	case ModeIPTables:
		if err := nsRun(ctx, h.NS, "iptables", "-w", "-L", "INPUT", "-n"); err != nil {
			return "", fmt.Errorf("%s=iptables but iptables does not work in a namespace: %w (apt-get install -y iptables)", EnvPartitionMode, err)
		}
		return ModeIPTables, nil
	case "":
	default:
		return "", fmt.Errorf("%s must be %q or %q, got %q", EnvPartitionMode, ModeIPTables, ModeRoute, m)
	}
	if _, err := exec.LookPath("iptables"); err == nil {
		if nsRun(ctx, h.NS, "iptables", "-w", "-L", "INPUT", "-n") == nil {
			return ModeIPTables, nil
		}
	}
	return ModeRoute, nil
}

// Close removes the namespaces, links and the bridge. Processes still
// running in a namespace are killed first.
func (nt *Net) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, h := range nt.Hosts {
		killNamespace(ctx, h.NS, nt.logf)
		if namespaceExists(ctx, h.NS) {
			if err := ipRun(ctx, "netns", "del", h.NS); err != nil {
				errs = append(errs, err)
			}
		}
		// Deleting the namespace deletes its veth end, and the kernel
		// then removes the other end by itself: only a link that is
		// still there after a failed delete is an error.
		if err := ipRun(ctx, "link", "del", h.hostLink); err != nil && linkExists(ctx, h.hostLink) {
			errs = append(errs, err)
		}
	}
	if err := ipRun(ctx, "link", "del", nt.Bridge); err != nil && linkExists(ctx, nt.Bridge) {
		errs = append(errs, err)
	}
	if nt.ID != "" {
		if err := os.Remove(ownerFile(nt.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Cut drops all traffic between hosts a and b (1-based), both ways.
func (nt *Net) Cut(ctx context.Context, a, b int) error {
	if a == b {
		return nil
	}
	if a > b {
		a, b = b, a
	}
	nt.mu.Lock()
	defer nt.mu.Unlock()
	if nt.cuts[[2]int{a, b}] {
		return nil
	}
	ha, hb := nt.Hosts[a-1], nt.Hosts[b-1]
	for _, side := range [][2]*Host{{ha, hb}, {hb, ha}} {
		self, other := side[0], side[1]
		var err error
		switch nt.Mode {
		case ModeIPTables:
			err = nsRun(ctx, self.NS, "iptables", "-w", "-I", "INPUT", "-s", other.IP, "-j", "DROP")
			if err == nil {
				err = nsRun(ctx, self.NS, "iptables", "-w", "-I", "OUTPUT", "-d", other.IP, "-j", "DROP")
			}
		default:
			err = ipRun(ctx, "-n", self.NS, "route", "add", "blackhole", other.IP+"/32")
		}
		if err != nil {
			return fmt.Errorf("cut %s from %s: %w", self.NS, other.NS, err)
		}
	}
	nt.cuts[[2]int{a, b}] = true
	return nil
}

// Isolate cuts host a from every other host.
func (nt *Net) Isolate(ctx context.Context, a int) error {
	for _, h := range nt.Hosts {
		if err := nt.Cut(ctx, a, h.Index); err != nil {
			return err
		}
	}
	return nil
}

// Heal removes every cut.
func (nt *Net) Heal(ctx context.Context) error {
	nt.mu.Lock()
	defer nt.mu.Unlock()
	var errs []error
	for _, h := range nt.Hosts {
		switch nt.Mode {
		case ModeIPTables:
			for _, chain := range []string{"INPUT", "OUTPUT"} {
				if err := nsRun(ctx, h.NS, "iptables", "-w", "-F", chain); err != nil {
					errs = append(errs, err)
				}
			}
		default:
			for _, o := range nt.Hosts {
				if nt.cuts[pair(h.Index, o.Index)] {
					if err := ipRun(ctx, "-n", h.NS, "route", "del", "blackhole", o.IP+"/32"); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
	}
	if len(errs) == 0 {
		nt.cuts = map[[2]int]bool{}
	}
	return errors.Join(errs...)
}

func pair(a, b int) [2]int {
	if a > b {
		a, b = b, a
	}
	return [2]int{a, b}
}

func namespaceExists(ctx context.Context, ns string) bool {
	out, err := ipOutput(ctx, "netns", "list")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == ns {
			return true
		}
	}
	return false
}

func linkExists(ctx context.Context, name string) bool {
	return ipRun(ctx, "link", "show", name) == nil
}

// freeSubnet picks the third octet of a 10.77.X.0/24 that no interface
// uses, so that concurrent runs do not collide.
func freeSubnet(ctx context.Context) (int, error) {
	out, err := ipOutput(ctx, "-o", "-4", "addr", "show")
	if err != nil {
		return 0, err
	}
	start := rand.IntN(200)
	for k := range 256 {
		x := (start + k) % 256
		if !strings.Contains(out, fmt.Sprintf(" 10.77.%d.", x)) {
			return x, nil
		}
	}
	return 0, errors.New("no free 10.77.X.0/24 subnet for the test network")
}

func ipRun(ctx context.Context, args ...string) error {
	_, err := ipOutput(ctx, args...)
	return err
}

func ipOutput(ctx context.Context, args ...string) (string, error) {
	return command(ctx, "ip", args...)
}

func nsRun(ctx context.Context, ns string, args ...string) error {
	_, err := command(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	return err
}

func command(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
