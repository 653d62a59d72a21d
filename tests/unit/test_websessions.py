"""The dashboard's link and session book: single use, expiry, log-out, bounded, hashed."""

from __future__ import annotations

from appliance.core.websessions import Grant, SessionBook, digest


def test_a_link_is_redeemed_once_and_only_before_it_expires() -> None:
    book = SessionBook()
    book.add_link("t1", "alice", "acme", now=100.0, ttl=300)
    assert book.redeem("t1", now=399.0) == Grant("alice", "acme", 400.0)
    assert book.redeem("t1", now=399.0) is None  # spent
    book.add_link("t2", "alice", "acme", now=100.0, ttl=300)
    assert book.redeem("t2", now=400.0) is None  # expired at 400
    assert book.redeem("t2", now=100.0) is None  # and gone
    assert book.redeem("never", now=100.0) is None


def test_a_session_lives_until_it_expires_or_is_closed() -> None:
    book = SessionBook()
    grant = Grant("alice", "acme", 0.0)
    session = book.open("s1", "c1", grant, now=10.0, ttl=60)
    assert (session.user, session.org, session.expires, session.csrf) == ("alice", "acme", 70, "c1")
    assert book.find("s1", now=69.9) == session
    assert book.find("s1", now=70.0) is None
    assert book.counts() == (0, 0)  # an expired session found is dropped
    book.open("s2", "c2", grant, now=10.0, ttl=60)
    assert book.close("s2") is True
    assert book.find("s2", now=11.0) is None
    assert book.close("s2") is False


def test_only_digests_of_tokens_are_held() -> None:
    book = SessionBook()
    book.add_link("link-token", "alice", "acme", now=0.0, ttl=60)
    book.open("session-token", "csrf", Grant("alice", "acme", 0.0), now=0.0, ttl=60)
    held = repr(vars(book))
    assert "link-token" not in held and "session-token" not in held
    assert digest("link-token") in held and len(digest("x")) == 64


def test_the_book_is_bounded_expired_entries_first_then_the_oldest() -> None:
    book = SessionBook(max_links=3, max_sessions=2)
    book.add_link("old", "u", "o", now=0.0, ttl=10)
    book.add_link("a", "u", "o", now=5.0, ttl=100)
    book.add_link("b", "u", "o", now=5.0, ttl=100)
    book.add_link("c", "u", "o", now=20.0, ttl=100)  # full: the expired "old" goes
    assert book.counts()[0] == 3
    assert book.redeem("a", now=21.0) is not None
    for n in range(10):
        book.add_link(f"n{n}", "u", "o", now=21.0, ttl=100)
    assert book.counts()[0] == 3
    assert book.redeem("n9", now=22.0) is not None and book.redeem("b", now=22.0) is None
    grant = Grant("u", "o", 0.0)
    for n in range(5):
        book.open(f"s{n}", "c", grant, now=0.0, ttl=100)
    assert book.counts()[1] == 2
    assert book.find("s0", now=1.0) is None and book.find("s4", now=1.0) is not None
