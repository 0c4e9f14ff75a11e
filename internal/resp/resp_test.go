package resp

import (
	"bufio"
	"context"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want any
		err  string
	}{
		{in: "+PONG\r\n", want: "PONG"},
		{in: ":42\r\n", want: int64(42)},
		{in: "$5\r\nhe\r\no\r\n", want: "he\r\no"},
		{in: "$0\r\n\r\n", want: ""},
		{in: "$-1\r\n", want: nil},
		{in: "*-1\r\n", want: nil},
		{in: "*0\r\n", want: []any{}},
		{in: "*3\r\n$1\r\na\r\n:1\r\n*1\r\n-ERR inner\r\n", want: []any{"a", int64(1), []any{Error("ERR inner")}}},
		{in: "-LOADING Redis is loading\r\n", err: "redis: LOADING Redis is loading"},
		{in: "?x\r\n", err: "unknown reply type"},
		{in: "+no crlf\n", err: "malformed"},
		{in: "$9\r\nshort\r\n", err: "EOF"},
	} {
		got, err := readReply(bufio.NewReader(strings.NewReader(tc.in)))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err = %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %#v, %v; want %#v", tc.in, got, err, tc.want)
		}
	}
}

// TestDo checks what Do sends, and that it selects the URL's database.
func TestDo(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		var b strings.Builder
		// SELECT 3 is 1+2*2 lines, answered +OK; SET k "v w" is 1+3*2.
		for i := range 12 {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			b.WriteString(line)
			if i == 4 {
				c.Write([]byte("+OK\r\n"))
			}
		}
		c.Write([]byte("-WRONGTYPE nope\r\n"))
		got <- b.String()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, "redis://"+l.Addr().String()+"/3")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_, err = c.Do(ctx, "SET", "k", "v w")
	var rerr Error
	if !errors.As(err, &rerr) || string(rerr) != "WRONGTYPE nope" {
		t.Fatalf("Do: err = %v, want the server's WRONGTYPE", err)
	}
	want := "*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv w\r\n"
	if s := <-got; s != want {
		t.Fatalf("sent %q, want %q", s, want)
	}
}
