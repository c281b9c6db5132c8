"""The relay's pure pieces: request target and header filtering, on plain WSGI environs; the
choice of a replica, on a pool of plain replicas."""

import io
import time

import gevent
import urllib3

from nmc.pool import Pool
from nmc.proxy import Proxy, _request_body, _request_headers, _request_id, _request_target
from nmc.replica import Replica, State


def environ(**extra):
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "wsgi.input": io.BytesIO()}
    base.update(extra)
    return base


def test_the_raw_target_is_relayed_byte_for_byte():
    raw = "/a%2Fb;c=d/%E2%82%AC?x=1&x=2&y=a+b"
    assert _request_target(environ(RAW_URI=raw, PATH_INFO="/a/b;c=d/€")) == raw


def test_an_absolute_form_target_keeps_only_path_and_query():
    assert _request_target(environ(RAW_URI="http://elsewhere.example/p?q=1")) == "/p?q=1"


def test_without_a_raw_uri_the_path_is_quoted_again():
    assert _request_target(environ(PATH_INFO="/a b", QUERY_STRING="q=1")) == "/a%20b?q=1"


def test_hop_by_hop_headers_and_those_named_in_connection_are_dropped():
    headers = _request_headers(environ(REMOTE_ADDR="10.1.2.3", **{"nmc.headers": [
        ("Host", "example"), ("Connection", "keep-alive, X-Private"), ("Keep-Alive", "300"),
        ("X-Private", "secret"), ("TE", "trailers"), ("Upgrade", "h2c"), ("Accept", "*/*"),
        ("Expect", "100-continue"), ("Set-Thing", "a"), ("set-thing", "b")]}), "rid-1")
    assert headers == {"Host": "example", "Accept": "*/*", "Set-Thing": "a, b",
                       "X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "http",
                       "X-Forwarded-Host": "example", "X-Request-ID": "rid-1",
                       "User-Agent": urllib3.util.SKIP_HEADER,
                       "Accept-Encoding": urllib3.util.SKIP_HEADER}


def test_forwarded_for_is_appended_to_and_the_other_forwarded_headers_replaced():
    headers = _request_headers(environ(REMOTE_ADDR="127.0.0.1", **{"nmc.headers": [
        ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.1"),
        ("X-Forwarded-Host", "spoofed"), ("X-Forwarded-Proto", "https"), ("Host", "shop:8443")]}),
        "rid")
    assert headers["X-Forwarded-For"] == "203.0.113.7, 198.51.100.1, 127.0.0.1"
    assert headers["X-Forwarded-Host"] == "shop:8443"
    assert headers["X-Forwarded-Proto"] == "http"


def test_a_sane_request_id_is_kept_and_a_missing_or_odd_one_generated():
    assert _request_id(environ(HTTP_X_REQUEST_ID="abc-123")) == "abc-123"
    generated = {_request_id(environ()), _request_id(environ(HTTP_X_REQUEST_ID="bad id\x01"))}
    assert len(generated) == 2 and all(len(g) == 32 for g in generated)


def test_a_get_without_a_body_gets_no_body():
    assert _request_body(environ()) is None


def test_a_small_body_is_read_whole_so_it_can_be_sent_again():
    body = _request_body(environ(REQUEST_METHOD="PUT", CONTENT_LENGTH="5",
                                 **{"wsgi.input": io.BytesIO(b"hello")}))
    assert body.data == b"hello" and body.replayable


def test_a_large_body_is_streamed_from_the_input():
    big = b"x" * (64 * 1024 + 1)
    body = _request_body(environ(REQUEST_METHOD="POST", CONTENT_LENGTH=str(len(big)),
                                 **{"wsgi.input": io.BytesIO(big)}))
    assert not body.replayable
    assert body.read(3) == b"xxx" and len(body.read(-1)) == len(big) - 3


def test_a_chunked_body_is_relayed_as_chunks():
    body = _request_body(environ(REQUEST_METHOD="POST", HTTP_TRANSFER_ENCODING="chunked",
                                 **{"wsgi.input": io.BytesIO(b"abc")}))
    assert b"".join(body) == b"abc"


def test_an_empty_chunked_body_is_no_body():
    assert _request_body(environ(REQUEST_METHOD="POST", HTTP_TRANSFER_ENCODING="chunked")) is None


# -- choosing a replica: the queue, the engine away, a replica tried already ---------------------


def proxy_over(*replicas, queue_timeout=0.05):
    return Proxy(Pool(list(replicas)), queue_timeout=queue_timeout)


def replica(slot, state):
    made = Replica(f"nmc-{slot}", slot)
    made.change_state(state, mirrored=True)
    return made


def test_with_no_replica_ready_a_request_waits_the_queue_timeout_then_gets_none():
    assert proxy_over(replica(3001, State.DOWN))._choose({}, None) is None


def test_while_the_engine_is_away_a_request_waits_for_a_replica_beyond_the_queue_timeout():
    down = replica(3001, State.DOWN)
    proxy = proxy_over(down)
    proxy.pool.engine_lost_at = time.monotonic()  # its port proxies come back with the engine
    gevent.spawn_later(0.3, down.change_state, State.READY, mirrored=True)  # 6 queue timeouts
    assert proxy._choose({}, None) is down


def test_a_replica_tried_already_is_skipped_until_it_has_been_out_and_back():
    refused = replica(3001, State.READY)
    proxy = proxy_over(refused)
    tried = {refused: (refused.instance_id, refused.ready_at)}
    assert proxy._choose(tried, None) is None  # the same instance, never out since
    refused.change_state(State.DOWN, mirrored=True)
    refused.change_state(State.READY, mirrored=True)  # back (its port answers again)
    assert proxy._choose(tried, None) is refused
