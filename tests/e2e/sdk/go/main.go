// The unmodified centrifuge-go SDK against two Meshcast gateways, for
// tests/e2e/test_sdk_go.py.
//
//	sdkgo -format json|protobuf -a <ws url of gateway A> -b <ws url of gateway B>
//
// The HMAC secret the gateways verify with comes in MESHCAST_SDK_SECRET; every
// wait is scaled by MESHCAST_TEST_TIMEOUT_SCALE. Prints one JSON line per step,
// {"step": name, "ok": bool, "error": ..., <results>}, and stops at the first
// failed step (exit 1). Gateway A's restart is the test's: the program prints
// {"await": "gateway_a_down"} and reads "down" on stdin, publishes while A is
// away, then prints {"await": "gateway_a_up"} and reads "up".
package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/centrifugal/centrifuge-go"
)

var (
	scale   = 1.0
	secret  string
	outLock sync.Mutex
	stdin   = make(chan string, 4)
)

// seconds is `s` seconds scaled for this machine.
func seconds(s float64) time.Duration {
	return time.Duration(s * scale * float64(time.Second))
}

func emit(line map[string]any) {
	outLock.Lock()
	defer outLock.Unlock()
	data, _ := json.Marshal(line)
	fmt.Println(string(data))
}

// token is an HS256 connection JWT for `user`, living `ttl`, with `extra` claims.
func token(user string, ttl time.Duration, extra map[string]any) string {
	claims := map[string]any{"sub": user, "exp": time.Now().Add(ttl).Unix()}
	for k, v := range extra {
		claims[k] = v
	}
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT"})
	body, _ := json.Marshal(claims)
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(body)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

// receive waits for one value of `ch`, at most `d`.
func receive[T any](ch <-chan T, d time.Duration, what string) (T, error) {
	select {
	case v := <-ch:
		return v, nil
	case <-time.After(d):
		var zero T
		return zero, fmt.Errorf("timed out after %s waiting for %s", d, what)
	}
}

var warmUp = []byte(`{"warm_up":true}`)

func isWarmUp(data []byte) bool {
	var v map[string]any
	return json.Unmarshal(data, &v) == nil && v["warm_up"] == true
}

func decode(data []byte) any {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return string(data)
	}
	return v
}

// peer is one client and what its connection saw.
type peer struct {
	name       string
	client     *centrifuge.Client
	connected  chan centrifuge.ConnectedEvent
	serverSubs chan centrifuge.ServerSubscribedEvent
	serverPubs chan centrifuge.ServerPublicationEvent
	warmedUp   chan struct{}
	mu         sync.Mutex
	codes      []uint32 // connecting and disconnected codes, in order
	errs       []string
}

func newPeer(name, url, format string, config centrifuge.Config) *peer {
	config.MaxReconnectDelay = seconds(1)
	var client *centrifuge.Client
	if format == "protobuf" {
		client = centrifuge.NewProtobufClient(url, config)
	} else {
		client = centrifuge.NewJsonClient(url, config)
	}
	p := &peer{
		name:       name,
		client:     client,
		connected:  make(chan centrifuge.ConnectedEvent, 16),
		serverSubs: make(chan centrifuge.ServerSubscribedEvent, 16),
		serverPubs: make(chan centrifuge.ServerPublicationEvent, 1024),
		warmedUp:   make(chan struct{}, 1),
	}
	client.OnConnected(func(e centrifuge.ConnectedEvent) { p.connected <- e })
	client.OnConnecting(func(e centrifuge.ConnectingEvent) { p.record(e.Code, "") })
	client.OnDisconnected(func(e centrifuge.DisconnectedEvent) { p.record(e.Code, "") })
	client.OnError(func(e centrifuge.ErrorEvent) { p.record(0, e.Error.Error()) })
	client.OnSubscribed(func(e centrifuge.ServerSubscribedEvent) { p.serverSubs <- e })
	client.OnPublication(func(e centrifuge.ServerPublicationEvent) {
		if isWarmUp(e.Data) {
			signal(p.warmedUp)
			return
		}
		p.serverPubs <- e
	})
	return p
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (p *peer) record(code uint32, err string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != "" {
		p.errs = append(p.errs, err)
	} else {
		p.codes = append(p.codes, code)
	}
}

func (p *peer) seen() ([]uint32, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]uint32{}, p.codes...), append([]string{}, p.errs...)
}

func (p *peer) connect() (centrifuge.ConnectedEvent, error) {
	if err := p.client.Connect(); err != nil {
		return centrifuge.ConnectedEvent{}, err
	}
	return receive(p.connected, seconds(5), p.name+" connected")
}

// tracked is one subscription and what it received (warm-up probes apart).
type tracked struct {
	sub        *centrifuge.Subscription
	subscribed chan centrifuge.SubscribedEvent
	pubs       chan centrifuge.PublicationEvent
	warmedUp   chan struct{}
	mu         sync.Mutex
	errs       []string
}

func (p *peer) subscribe(channel string, config centrifuge.SubscriptionConfig) (*tracked, centrifuge.SubscribedEvent, error) {
	sub, err := p.client.NewSubscription(channel, config)
	if err != nil {
		return nil, centrifuge.SubscribedEvent{}, err
	}
	t := &tracked{
		sub:        sub,
		subscribed: make(chan centrifuge.SubscribedEvent, 16),
		pubs:       make(chan centrifuge.PublicationEvent, 1024),
		warmedUp:   make(chan struct{}, 1),
	}
	sub.OnSubscribed(func(e centrifuge.SubscribedEvent) { t.subscribed <- e })
	sub.OnError(func(e centrifuge.SubscriptionErrorEvent) { t.record(e.Error.Error()) })
	sub.OnPublication(func(e centrifuge.PublicationEvent) {
		if isWarmUp(e.Data) {
			signal(t.warmedUp)
			return
		}
		t.pubs <- e
	})
	if err := sub.Subscribe(); err != nil {
		return nil, centrifuge.SubscribedEvent{}, err
	}
	event, err := receive(t.subscribed, seconds(5), p.name+" subscribed to "+channel)
	if err != nil {
		err = fmt.Errorf("%w (subscription errors: %v)", err, t.seen())
	}
	return t, event, err
}

func (t *tracked) record(err string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errs = append(t.errs, err)
}

func (t *tracked) seen() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string{}, t.errs...)
}

// next is the next `n` publications of `t`: their data and publishers.
func (t *tracked) next(n int, d time.Duration) ([]any, []string, []uint64, error) {
	var data []any
	var users []string
	var offsets []uint64
	deadline := time.After(d)
	for len(data) < n {
		select {
		case e := <-t.pubs:
			data = append(data, decode(e.Data))
			user := ""
			if e.Info != nil {
				user = e.Info.User
			}
			users = append(users, user)
			offsets = append(offsets, e.Offset)
		case <-deadline:
			return data, users, offsets, fmt.Errorf("got %d of %d publications within %s", len(data), n, d)
		}
	}
	return data, users, offsets, nil
}

// warm until `seen` signals: a new subscription's interest reaches the other
// NATS nodes a moment after its subscribe reply, so probe until one arrives.
func warm(publisher *peer, channel string, seen chan struct{}) error {
	deadline := time.Now().Add(seconds(10))
	for time.Now().Before(deadline) {
		if err := publish(publisher, channel, warmUp); err != nil {
			return err
		}
		select {
		case <-seen:
			return nil
		case <-time.After(seconds(0.2)):
		}
	}
	return errors.New("no warm-up probe arrived within 10 s")
}

func publish(p *peer, channel string, data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), seconds(5))
	defer cancel()
	_, err := p.client.Publish(ctx, channel, data)
	return err
}

func value(n int, from string) []byte {
	data, _ := json.Marshal(map[string]any{"n": n, "from": from})
	return data
}

func values(from string, ns ...int) []any {
	var out []any
	for _, n := range ns {
		out = append(out, decode(value(n, from)))
	}
	return out
}

func equal(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func awaitTest(what, answer string) error {
	emit(map[string]any{"await": what})
	line, err := receive(stdin, seconds(30), "the test's "+strconv.Quote(answer))
	if err != nil {
		return err
	}
	if line != answer {
		return fmt.Errorf("the test said %q, not %q", line, answer)
	}
	return nil
}

type scenario struct {
	format, urlA, urlB string
	channel, serverCh  string
	a, b, c, r         *peer
	subA, subB         *tracked
	epoch              string
	refreshes          atomic.Int32
	refreshTTL         time.Duration
}

type step struct {
	name string
	run  func() (map[string]any, error)
}

func (s *scenario) steps() []step {
	return []step{
		{"connect", s.connect},
		{"subscribe", s.subscribe},
		{"publish_across_gateways", s.publishAcross},
		{"history", s.history},
		{"presence", s.presence},
		{"presence_stats", s.presenceStats},
		{"server_side_subscription", s.serverSide},
		{"recovery_after_gateway_restart", s.recovery},
		{"token_refresh", s.refresh},
	}
}

func (s *scenario) connect() (map[string]any, error) {
	s.a = newPeer("a", s.urlA, s.format, centrifuge.Config{Token: token("go-a", time.Hour, nil)})
	s.b = newPeer("b", s.urlB, s.format, centrifuge.Config{Token: token("go-b", time.Hour, nil)})
	// The refreshing client starts now and is checked last: its refreshes run beside the other steps.
	s.r = newPeer("r", s.urlB, s.format, centrifuge.Config{
		GetToken: func(centrifuge.ConnectionTokenEvent) (string, error) {
			s.refreshes.Add(1)
			return token("go-r", s.refreshTTL, nil), nil
		},
	})
	ids := map[string]any{}
	for _, p := range []*peer{s.a, s.b, s.r} {
		event, err := p.connect()
		if err != nil {
			return ids, err
		}
		ids[p.name+"_client"] = event.ClientID
	}
	return ids, nil
}

func (s *scenario) subscribe() (map[string]any, error) {
	var event centrifuge.SubscribedEvent
	var err error
	s.subA, event, err = s.a.subscribe(s.channel, centrifuge.SubscriptionConfig{Recoverable: true, Positioned: true})
	if err != nil {
		return nil, err
	}
	result := map[string]any{"recoverable": event.Recoverable, "positioned": event.Positioned}
	if event.StreamPosition != nil {
		s.epoch = event.StreamPosition.Epoch
		result["epoch"] = event.StreamPosition.Epoch
		result["offset"] = event.StreamPosition.Offset
	}
	s.subB, _, err = s.b.subscribe(s.channel, centrifuge.SubscriptionConfig{})
	return result, err
}

func (s *scenario) publishAcross() (map[string]any, error) {
	if err := warm(s.b, s.channel, s.subA.warmedUp); err != nil {
		return nil, fmt.Errorf("b to a: %w", err)
	}
	if err := warm(s.a, s.channel, s.subB.warmedUp); err != nil {
		return nil, fmt.Errorf("a to b: %w", err)
	}
	if err := publish(s.b, s.channel, value(1, "b")); err != nil {
		return nil, err
	}
	if err := publish(s.a, s.channel, value(2, "a")); err != nil {
		return nil, err
	}
	dataA, usersA, _, errA := s.subA.next(2, seconds(5))
	dataB, usersB, _, errB := s.subB.next(2, seconds(5))
	return map[string]any{
		"a_received": dataA, "a_publishers": usersA,
		"b_received": dataB, "b_publishers": usersB,
	}, errors.Join(errA, errB)
}

func (s *scenario) history() (map[string]any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), seconds(5))
	defer cancel()
	res, err := s.subA.sub.History(ctx, centrifuge.WithHistoryLimit(100))
	if err != nil {
		return nil, err
	}
	var data []any
	var offsets []uint64
	for _, pub := range res.Publications {
		if !isWarmUp(pub.Data) {
			data = append(data, decode(pub.Data))
			offsets = append(offsets, pub.Offset)
		}
	}
	return map[string]any{
		"publications": data, "offsets": offsets, "epoch": res.Epoch, "offset": res.Offset,
		"subscribed_epoch": s.epoch,
	}, nil
}

func users(clients map[string]centrifuge.ClientInfo) []string {
	var out []string
	for _, info := range clients {
		out = append(out, info.User)
	}
	sort.Strings(out)
	return out
}

// poll calls `try` until it reports done, at most `d`; the last result stands.
func poll(d time.Duration, try func() (map[string]any, bool, error)) (map[string]any, error) {
	deadline := time.Now().Add(d)
	for {
		result, done, err := try()
		if err == nil && done {
			return result, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("not as expected within %s", d)
			}
			return result, err
		}
		time.Sleep(seconds(0.1))
	}
}

func (s *scenario) presence() (map[string]any, error) {
	return poll(seconds(5), func() (map[string]any, bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), seconds(5))
		defer cancel()
		res, err := s.subA.sub.Presence(ctx)
		if err != nil {
			return nil, false, err
		}
		found := users(res.Clients)
		return map[string]any{"users": found}, equal(found, []string{"go-a", "go-b"}), nil
	})
}

func (s *scenario) presenceStats() (map[string]any, error) {
	return poll(seconds(5), func() (map[string]any, bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), seconds(5))
		defer cancel()
		res, err := s.subA.sub.PresenceStats(ctx)
		if err != nil {
			return nil, false, err
		}
		result := map[string]any{"num_clients": res.NumClients, "num_users": res.NumUsers}
		return result, res.NumClients == 2 && res.NumUsers == 2, nil
	})
}

func (s *scenario) serverSide() (map[string]any, error) {
	subs := map[string]any{"subs": map[string]any{s.serverCh: map[string]any{}}}
	s.c = newPeer("c", s.urlA, s.format, centrifuge.Config{Token: token("go-c", time.Hour, subs)})
	if _, err := s.c.connect(); err != nil {
		return nil, err
	}
	event, err := receive(s.c.serverSubs, seconds(5), "the server-side subscription")
	if err != nil {
		return nil, err
	}
	result := map[string]any{"channel": event.Channel}
	if err := warm(s.b, s.serverCh, s.c.warmedUp); err != nil {
		return result, err
	}
	if err := publish(s.b, s.serverCh, value(3, "b")); err != nil {
		return result, err
	}
	pub, err := receive(s.c.serverPubs, seconds(5), "a publication on the server-side subscription")
	if err != nil {
		return result, err
	}
	result["received_channel"] = pub.Channel
	result["received"] = decode(pub.Data)
	return result, nil
}

func (s *scenario) recovery() (map[string]any, error) {
	if err := awaitTest("gateway_a_down", "down"); err != nil {
		return nil, err
	}
	missed := []int{10, 11, 12, 13, 14}
	for _, n := range missed {
		if err := publish(s.b, s.channel, value(n, "b")); err != nil {
			return nil, fmt.Errorf("publish while gateway A is away: %w", err)
		}
	}
	if err := awaitTest("gateway_a_up", "up"); err != nil {
		return nil, err
	}
	event, err := receive(s.subA.subscribed, seconds(15), "a's subscription again after the restart")
	if err != nil {
		return nil, fmt.Errorf("%w (subscription errors: %v)", err, s.subA.seen())
	}
	result := map[string]any{"was_recovering": event.WasRecovering, "recovered": event.Recovered}
	data, _, _, err := s.subA.next(len(missed), seconds(5))
	result["received"] = data
	result["expected"] = values("b", missed...)
	codes, _ := s.a.seen()
	result["a_connection_codes"] = codes
	return result, err
}

func (s *scenario) refresh() (map[string]any, error) {
	// Calls: the first connect, then one per refresh the SDK schedules from the
	// ttl of the previous reply. A refused refresh is retried only after 10 s, so
	// a third call this soon means the gateway accepted the second token.
	wanted := int32(3)
	result, err := poll(s.refreshTTL*3+seconds(5), func() (map[string]any, bool, error) {
		n := s.refreshes.Load()
		return map[string]any{"get_token_calls": n}, n >= wanted, nil
	})
	codes, errs := s.r.seen()
	if len(codes) > 0 && codes[0] == 0 {
		codes = codes[1:] // Connect() itself reports connecting, code 0
	}
	result["codes"] = codes
	result["errors"] = errs
	result["state"] = string(s.r.client.State())
	result["token_ttl_seconds"] = s.refreshTTL.Seconds()
	if err == nil {
		err = publish(s.r, s.channel, value(4, "r"))
	}
	return result, err
}

func (s *scenario) close() {
	for _, p := range []*peer{s.a, s.b, s.c, s.r} {
		if p != nil {
			p.client.Close()
		}
	}
}

func main() {
	format := flag.String("format", "json", "json or protobuf")
	urlA := flag.String("a", "", "gateway A's WebSocket URL")
	urlB := flag.String("b", "", "gateway B's WebSocket URL")
	flag.Parse()
	secret = os.Getenv("MESHCAST_SDK_SECRET")
	if v, err := strconv.ParseFloat(os.Getenv("MESHCAST_TEST_TIMEOUT_SCALE"), 64); err == nil && v > 0 {
		scale = v
	}
	if secret == "" || *urlA == "" || *urlB == "" || (*format != "json" && *format != "protobuf") {
		fmt.Fprintln(os.Stderr, "usage: MESHCAST_SDK_SECRET=... sdkgo -format json|protobuf -a URL -b URL")
		os.Exit(2)
	}
	go func() {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			stdin <- lines.Text()
		}
	}()
	s := &scenario{
		format:   *format,
		urlA:     *urlA,
		urlB:     *urlB,
		channel:  "chat:go-" + *format,
		serverCh: "chat:go-server-" + *format,
		// Whole seconds, and at least the scaled 2 s plus one (see meshcast.testing.token_ttl).
		refreshTTL: time.Duration(int(seconds(2).Seconds()+0.999)+1) * time.Second,
	}
	defer s.close()
	for _, st := range s.steps() {
		result, err := st.run()
		if result == nil {
			result = map[string]any{}
		}
		result["step"] = st.name
		result["ok"] = err == nil
		if err != nil {
			result["error"] = err.Error()
			emit(result)
			s.close()
			os.Exit(1)
		}
		emit(result)
	}
	emit(map[string]any{"step": "done", "ok": true})
}
