//! Reader tests: a recorded CCS session (seed 000, server side) fed in every
//! possible split, namespaces, limits, forbidden constructs, escaping.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use xmpp::reader::{Bind, Event, Features, Iq, Message, StanzaReader};
use xmpp::{writer, XmppError};

/// The server side of seed 000, plus what CCS also does: an upstream message
/// with from/to, the prefixed `data:gcm` nack, entities, keepalives.
const SESSION: &str = concat!(
    "<stream:stream from=\"gcm.googleapis.com\"\n",
    "id=\"A89EBEF93CBB12CF\" version=\"1.0\"\n",
    "xmlns:stream=\"http://etherx.jabber.org/streams\"\n",
    "xmlns=\"jabber:client\">\n",
    "<stream:features>\n",
    "<mechanisms xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">\n",
    "<mechanism>X-OAUTH2</mechanism>\n",
    "<mechanism>X-GOOGLE-TOKEN</mechanism>\n",
    "<mechanism>PLAIN</mechanism>\n",
    "</mechanisms>\n",
    "</stream:features>\n",
    "<success xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"/>",
    // restarted stream
    "<stream:stream from=\"gcm.googleapis.com\"\n",
    "id=\"A89EBEF93CBB12D0\" version=\"1.0\"\n",
    "xmlns:stream=\"http://etherx.jabber.org/streams\"\n",
    "xmlns=\"jabber:client\">\n",
    "<stream:features>\n",
    "<bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"/>\n",
    "<session xmlns=\"urn:ietf:params:xml:ns:xmpp-session\"/>\n",
    "</stream:features>\n",
    "<iq type=\"result\">\n",
    "<bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\">\n",
    "<jid>SENDER_ID@gcm.googleapis.com/RESOURCE</jid>\n",
    "</bind>\n",
    "</iq>\n",
    "<message id=\"\">\n",
    "<gcm xmlns=\"google:mobile:data\">\n",
    "{\"from\":\"bk3RNwTe3H0:CI2k_HHwgIpoDKCIZvvDMExUdFQ3P1\",\"message_id\":\"1366082849205\",\"message_type\":\"ack\"}\n",
    "</gcm>\n",
    "</message>\n",
    " ",
    "<message to=\"xxxxx@gcm.googleapis.com\" from=\"devices@gcm.googleapis.com\" type=\"normal\">\n",
    "<gcm xmlns=\"google:mobile:data\">\n",
    "{\"data\": {\"Hello\":\"World &amp; &lt;you&gt; &quot;q&quot; &apos;a&apos; &#65;&#x42;\"},\n",
    "\"time_to_live\":10,\n",
    "\"from\":\"feQqD9P957k:APA91bH-jE8j6dAohIB5spQrCajDwUsDtNdf3\",\n",
    "\"message_id\":\"1234567\",\n",
    "\"category\":\"com.gmail.rajeshkhumanthem.phantom\"\n",
    "}\n",
    "</gcm>\n",
    "</message>",
    "<!-- a comment between stanzas -->",
    "<message>\n",
    "<data:gcm xmlns:data=\"google:mobile:data\">\n",
    "{ \"message_type\":\"nack\",\n",
    "\"from\":\"eQq\",\n",
    "\"message_id\":\"800001\",\n",
    "\"error\":\"BAD_REGISTRATION\",\n",
    "\"error_description\":\"\"\n",
    "}\n",
    "</data:gcm>\n",
    "</message>\n\n  \t",
    "<message id='cd'><gcm xmlns='google:mobile:data'><![CDATA[{\"x\":\"<&>\"}]]></gcm></message>",
    "<presence/>",
    "</stream:stream>",
);

fn expected_session() -> Vec<Event> {
    let k = Event::Keepalive;
    vec![
        Event::StreamStart {
            id: Some("A89EBEF93CBB12CF".into()),
            from: Some("gcm.googleapis.com".into()),
            to: None,
        },
        k.clone(),
        Event::Features(Features {
            mechanisms: vec!["X-OAUTH2".into(), "X-GOOGLE-TOKEN".into(), "PLAIN".into()],
            bind: false,
            session: false,
        }),
        k.clone(),
        Event::SaslSuccess,
        Event::StreamStart {
            id: Some("A89EBEF93CBB12D0".into()),
            from: Some("gcm.googleapis.com".into()),
            to: None,
        },
        k.clone(),
        Event::Features(Features {
            mechanisms: vec![],
            bind: true,
            session: true,
        }),
        k.clone(),
        Event::Iq(Iq {
            id: None,
            kind: "result".into(),
            bind: Some(Bind {
                resource: None,
                jid: Some("SENDER_ID@gcm.googleapis.com/RESOURCE".into()),
            }),
        }),
        k.clone(),
        Event::Message(Message {
            id: Some(String::new()),
            from: None,
            to: None,
            gcm: Some(
                "{\"from\":\"bk3RNwTe3H0:CI2k_HHwgIpoDKCIZvvDMExUdFQ3P1\",\"message_id\":\"1366082849205\",\"message_type\":\"ack\"}"
                    .into(),
            ),
        }),
        k.clone(),
        Event::Message(Message {
            id: None,
            from: Some("devices@gcm.googleapis.com".into()),
            to: Some("xxxxx@gcm.googleapis.com".into()),
            gcm: Some(
                concat!(
                    "{\"data\": {\"Hello\":\"World & <you> \"q\" 'a' AB\"},\n",
                    "\"time_to_live\":10,\n",
                    "\"from\":\"feQqD9P957k:APA91bH-jE8j6dAohIB5spQrCajDwUsDtNdf3\",\n",
                    "\"message_id\":\"1234567\",\n",
                    "\"category\":\"com.gmail.rajeshkhumanthem.phantom\"\n",
                    "}"
                )
                .into(),
            ),
        }),
        Event::Message(Message {
            id: None,
            from: None,
            to: None,
            gcm: Some(
                concat!(
                    "{ \"message_type\":\"nack\",\n",
                    "\"from\":\"eQq\",\n",
                    "\"message_id\":\"800001\",\n",
                    "\"error\":\"BAD_REGISTRATION\",\n",
                    "\"error_description\":\"\"\n",
                    "}"
                )
                .into(),
            ),
        }),
        k,
        Event::Message(Message {
            id: Some("cd".into()),
            from: None,
            to: None,
            gcm: Some("{\"x\":\"<&>\"}".into()),
        }),
        Event::Other {
            name: "presence".into(),
        },
        Event::StreamEnd,
    ]
}

/// Drain all available events, acting like a client driver: reset on
/// `<success/>`. Errors end the run.
fn drain(r: &mut StanzaReader, out: &mut Vec<Event>) -> Result<(), XmppError> {
    while let Some(ev) = r.next_event()? {
        if ev == Event::SaslSuccess {
            r.reset();
        }
        out.push(ev);
    }
    Ok(())
}

/// Feed `input` in the given chunks; merge consecutive keepalives (a
/// whitespace run split across reads may be reported more than once).
fn run_chunks<'a>(
    max: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Event>, XmppError> {
    let mut r = StanzaReader::new(max);
    let mut out = Vec::new();
    for c in chunks {
        r.feed(c);
        drain(&mut r, &mut out)?;
        assert!(r.buffered() <= max + c.len(), "buffer grew beyond the cap");
    }
    out.dedup_by(|a, b| *a == Event::Keepalive && *b == Event::Keepalive);
    Ok(out)
}

fn run(max: usize, input: &[u8]) -> Result<Vec<Event>, XmppError> {
    run_chunks(max, [input])
}

fn split_at_points(input: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

/// Run `input` in one feed and return the error it must produce.
fn first_error(max: usize, input: &[u8]) -> XmppError {
    match run(max, input) {
        Ok(evs) => panic!("expected an error, got {evs:?}"),
        Err(e) => e,
    }
}

const HDR: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='x' id='i' version='1.0'>";

fn with_hdr(body: &str) -> Vec<u8> {
    format!("{HDR}{body}").into_bytes()
}

#[test]
fn recorded_session_in_one_feed() {
    assert_eq!(run(4096, SESSION.as_bytes()).unwrap(), expected_session());
}

#[test]
fn recorded_session_split_at_every_byte_boundary() {
    let input = SESSION.as_bytes();
    let expected = expected_session();
    for i in 0..=input.len() {
        let got = run_chunks(4096, [&input[..i], &input[i..]]).unwrap();
        assert_eq!(got, expected, "split at {i}");
    }
}

#[test]
fn recorded_session_one_byte_at_a_time() {
    let input = SESSION.as_bytes();
    let got = run_chunks(4096, input.chunks(1)).unwrap();
    assert_eq!(got, expected_session());
}

#[test]
fn recorded_session_three_way_splits() {
    let input = SESSION.as_bytes();
    let expected = expected_session();
    // every pair of split points 37 bytes apart or so, cheap but broad
    for i in (0..input.len()).step_by(7) {
        for j in (i..input.len()).step_by(37) {
            let got = run_chunks(4096, split_at_points(input, vec![i, j])).unwrap();
            assert_eq!(got, expected, "splits at {i},{j}");
        }
    }
}

proptest! {
    #[test]
    fn recorded_session_random_splits(points in proptest::collection::vec(0..SESSION.len(), 0..40)) {
        let input = SESSION.as_bytes();
        let got = run_chunks(4096, split_at_points(input, points)).unwrap();
        prop_assert_eq!(got, expected_session());
    }
}

#[test]
fn several_stanzas_in_one_feed_and_keepalives() {
    let body = " <message id='1'/>\n<message id='2'/><message id='3'></message>  \r\n\t";
    let evs = run(1024, &with_hdr(body)).unwrap();
    let ids: Vec<_> = evs
        .iter()
        .map(|e| match e {
            Event::Message(m) => m.id.clone().unwrap(),
            Event::Keepalive => "_".into(),
            Event::StreamStart { .. } => "^".into(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["^", "_", "1", "_", "2", "3", "_"]);
}

#[test]
fn keepalive_reported_as_soon_as_it_arrives() {
    let mut r = StanzaReader::new(1024);
    r.feed(HDR.as_bytes());
    assert!(matches!(
        r.next_event().unwrap(),
        Some(Event::StreamStart { .. })
    ));
    assert_eq!(r.next_event().unwrap(), None);
    for _ in 0..3 {
        r.feed(writer::KEEPALIVE);
        assert_eq!(r.next_event().unwrap(), Some(Event::Keepalive));
        assert_eq!(r.next_event().unwrap(), None);
        assert_eq!(r.buffered(), 0);
    }
}

#[test]
fn gcm_under_any_prefix_and_only_in_its_namespace() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            "<message><gcm xmlns='google:mobile:data'>1</gcm></message>",
            Some("1"),
        ),
        (
            "<message><data:gcm xmlns:data='google:mobile:data'>2</data:gcm></message>",
            Some("2"),
        ),
        (
            "<message xmlns:g='google:mobile:data'><g:gcm>3</g:gcm></message>",
            Some("3"),
        ),
        (
            "<message xmlns:g='google:mobile:data'><body>x</body><g:gcm> 4 </g:gcm></message>",
            Some("4"),
        ),
        // prefix declared on the stream header itself
        ("<message><gg:gcm>5</gg:gcm></message>", Some("5")),
        // wrong or missing namespace: not FCM's gcm
        ("<message><gcm>6</gcm></message>", None),
        ("<message><gcm xmlns='urn:other'>7</gcm></message>", None),
        (
            "<message><x:gcm xmlns:x='google:mobile:datax'>8</x:gcm></message>",
            None,
        ),
        (
            "<message><data xmlns='google:mobile:data'>9</data></message>",
            None,
        ),
    ];
    for (stanza, want) in cases {
        let input = format!(
            "<stream:stream xmlns='jabber:client' xmlns:gg='google:mobile:data' xmlns:stream='http://etherx.jabber.org/streams'>{stanza}"
        );
        let evs = run(1024, input.as_bytes()).unwrap();
        let Event::Message(m) = &evs[1] else {
            panic!("{stanza}: {evs:?}")
        };
        assert_eq!(m.gcm.as_deref(), *want, "{stanza}");
    }
}

#[test]
fn stream_prefix_other_than_stream() {
    let input = "<?xml version='1.0' encoding='UTF-8'?>\n<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'>\
        <s:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></s:features>\
        <s:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced by new connection</text></s:error></s:stream>";
    let evs = run(1024, input.as_bytes()).unwrap();
    assert_eq!(
        evs[1],
        Event::Features(Features {
            mechanisms: vec!["PLAIN".into()],
            ..Features::default()
        })
    );
    assert_eq!(
        evs[2],
        Event::StreamError {
            condition: "conflict".into(),
            text: Some("Replaced by new connection".into())
        }
    );
    assert_eq!(evs[3], Event::StreamEnd);
}

#[test]
fn prosody_style_features_are_tolerated() {
    // What Prosody 0.12 sends on a direct-TLS c2s port, before and after SASL.
    let input = concat!(
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' id='1b9a' xmlns='jabber:client' version='1.0' from='localhost'>",
        "<stream:features><register xmlns='http://jabber.org/features/iq-register'/>",
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>",
        "<c hash='sha-1' node='http://prosody.im' ver='abc=' xmlns='http://jabber.org/protocol/caps'/></stream:features>",
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' id='2c' xmlns='jabber:client' version='1.0' from='localhost'>",
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind>",
        "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>",
        "<sm xmlns='urn:xmpp:sm:2'><optional/></sm><sm xmlns='urn:xmpp:sm:3'><optional/></sm><csi xmlns='urn:xmpp:csi:0'/>",
        "<ver xmlns='urn:xmpp:features:rosterver'/></stream:features>",
        "<iq id='bind_1' type='result'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>gimmm@localhost/abc</jid></bind></iq>",
    );
    let evs = run(4096, input.as_bytes()).unwrap();
    assert_eq!(
        evs,
        vec![
            Event::StreamStart {
                id: Some("1b9a".into()),
                from: Some("localhost".into()),
                to: None
            },
            Event::Features(Features {
                mechanisms: vec![
                    "SCRAM-SHA-1-PLUS".into(),
                    "SCRAM-SHA-1".into(),
                    "PLAIN".into()
                ],
                bind: false,
                session: false
            }),
            Event::SaslSuccess,
            Event::StreamStart {
                id: Some("2c".into()),
                from: Some("localhost".into()),
                to: None
            },
            Event::Features(Features {
                mechanisms: vec![],
                bind: true,
                session: true
            }),
            Event::Iq(Iq {
                id: Some("bind_1".into()),
                kind: "result".into(),
                bind: Some(Bind {
                    resource: None,
                    jid: Some("gimmm@localhost/abc".into())
                })
            }),
        ]
    );
}

#[test]
fn client_side_stanzas_as_a_server_sees_them() {
    // The seed's client half: self-closed header variant and the auth with a
    // line break inside the base64.
    let input = concat!(
        "<stream:stream to=\"gcm.googleapis.com\"\n version=\"1.0\" xmlns=\"jabber:client\"\n",
        " xmlns:stream=\"http://etherx.jabber.org/streams\">\n",
        "<auth mechanism=\"PLAIN\"\nxmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">MTI2MjAwMzQ3OTMzQHByb2plY3RzLmdjbS5hb\n",
        "mFTeUIzcmNaTmtmbnFLZEZiOW1oekNCaVlwT1JEQTJKV1d0dw==\n</auth>",
        "<iq type=\"set\">\n<bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"><resource>r1</resource></bind>\n</iq>",
        "<iq type=\"error\" id=\"e\"/>",
    );
    let evs = run(4096, input.as_bytes()).unwrap();
    assert_eq!(
        evs[0],
        Event::StreamStart {
            id: None,
            from: None,
            to: Some("gcm.googleapis.com".into())
        }
    );
    assert_eq!(
        evs[2],
        Event::Auth {
            mechanism: "PLAIN".into(),
            payload: "MTI2MjAwMzQ3OTMzQHByb2plY3RzLmdjbS5hbmFTeUIzcmNaTmtmbnFLZEZiOW1oekNCaVlwT1JEQTJKV1d0dw==".into()
        }
    );
    assert_eq!(
        evs[3],
        Event::Iq(Iq {
            id: None,
            kind: "set".into(),
            bind: Some(Bind {
                resource: Some("r1".into()),
                jid: None
            })
        })
    );
    assert_eq!(
        evs[4],
        Event::Iq(Iq {
            id: Some("e".into()),
            kind: "error".into(),
            bind: None
        })
    );

    let self_closed = "<stream:stream to=\"gcm.googleapis.com\" version=\"1.0\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\"/>";
    let evs = run(4096, self_closed.as_bytes()).unwrap();
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[1], Event::StreamEnd);
}

#[test]
fn sasl_failure_conditions() {
    let evs = run(
        1024,
        &with_hdr(concat!(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/><text>nope</text></failure>",
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
        )),
    )
    .unwrap();
    assert_eq!(
        evs[1..],
        [
            Event::SaslFailure {
                condition: "not-authorized".into()
            },
            Event::SaslFailure {
                condition: "unspecified".into()
            }
        ]
    );
}

#[test]
fn comments_inside_stanzas_are_ignored() {
    let evs = run(
        1024,
        &with_hdr("<message id='1'><!-- c --><gcm xmlns='google:mobile:data'>a<!-- x -->b</gcm></message>"),
    )
    .unwrap();
    assert_eq!(
        evs[1],
        Event::Message(Message {
            id: Some("1".into()),
            gcm: Some("ab".into()),
            ..Message::default()
        })
    );
}

#[test]
fn nothing_after_stream_end() {
    let mut r = StanzaReader::new(1024);
    r.feed(&with_hdr("</stream:stream><message/>garbage<<<"));
    assert!(matches!(
        r.next_event().unwrap(),
        Some(Event::StreamStart { .. })
    ));
    assert_eq!(r.next_event().unwrap(), Some(Event::StreamEnd));
    assert_eq!(r.next_event().unwrap(), None);
    r.feed(b"more garbage");
    assert_eq!(r.next_event().unwrap(), None);
    assert_eq!(r.buffered(), 0);
}

// ---- limits ----------------------------------------------------------------

#[test]
fn stanza_size_limit_is_exact() {
    // The header counts against the same limit, so make the stanza longer.
    let pad = "x".repeat(HDR.len());
    let stanza =
        format!("<message id='{pad}'><gcm xmlns='google:mobile:data'>{{}}</gcm></message>");
    let n = stanza.len();
    let ok = run(n, &with_hdr(&stanza)).unwrap();
    assert!(matches!(ok[1], Event::Message(_)));
    let err = run(n - 1, &with_hdr(&stanza)).unwrap_err();
    assert!(
        matches!(err, XmppError::StanzaTooLarge { limit } if limit == n - 1),
        "{err}"
    );
}

#[test]
fn oversize_incomplete_stanza_is_refused_before_it_completes() {
    let max = 256;
    let mut r = StanzaReader::new(max);
    r.feed(HDR.as_bytes());
    assert!(matches!(
        r.next_event().unwrap(),
        Some(Event::StreamStart { .. })
    ));
    r.feed(b"<message><gcm xmlns='google:mobile:data'>");
    assert_eq!(r.next_event().unwrap(), None);
    let mut fed = 0;
    let err = loop {
        r.feed(b"aaaaaaaaaaaaaaaa");
        fed += 16;
        assert!(r.buffered() <= max + 16);
        match r.next_event() {
            Ok(None) => continue,
            Ok(Some(ev)) => panic!("{ev:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, XmppError::StanzaTooLarge { limit: 256 }));
    assert!(fed <= max);
    // the reader stays failed and does not buffer any more
    r.feed(&[b'a'; 10_000]);
    assert_eq!(r.buffered(), 0);
    assert!(r.next_event().is_err());
}

#[test]
fn oversize_in_one_big_feed_fails_fast() {
    let mut input = with_hdr("<message>");
    input.extend(std::iter::repeat_n(b'a', 1_000_000));
    let err = first_error(1024, &input);
    assert!(matches!(err, XmppError::StanzaTooLarge { limit: 1024 }));
}

#[test]
fn oversize_inside_attribute_and_comment_and_header() {
    let long = "a".repeat(2000);
    for body in [
        format!("<message id='{long}"),
        format!("<message><!-- {long}"),
        format!("<message><![CDATA[{long}"),
        format!("<!-- {long}"),
        format!("<message></{long}"),
    ] {
        let err = first_error(1024, &with_hdr(&body));
        assert!(
            matches!(err, XmppError::StanzaTooLarge { .. }),
            "{body:.30}: {err}"
        );
    }
    let err = first_error(100, format!("<stream:stream id='{long}'").as_bytes());
    assert!(matches!(err, XmppError::StanzaTooLarge { .. }));
}

#[test]
fn large_stanza_fed_byte_by_byte_is_linear() {
    // 60 KB one byte at a time: the scanner must not rescan what it saw
    // (quadratic work would be ~1.8e9 byte visits). Work is counted, not
    // timed.
    let json = format!("{{\"data\":\"{}\"}}", "y".repeat(60_000));
    let input = with_hdr(&writer::gcm_message(Some("big"), &json));
    let mut r = StanzaReader::new(64 * 1024);
    let mut evs = Vec::new();
    for c in input.chunks(1) {
        r.feed(c);
        drain(&mut r, &mut evs).unwrap();
    }
    assert_eq!(evs.len(), 2);
    let Event::Message(m) = &evs[1] else { panic!() };
    assert_eq!(m.gcm.as_deref(), Some(json.as_str()));
    let scanned = r.bytes_scanned();
    assert!(
        scanned >= input.len() as u64 / 2 && scanned <= 2 * input.len() as u64,
        "scanned {scanned} bytes for {} bytes of input",
        input.len()
    );
}

#[test]
fn deep_nesting_is_refused() {
    let body = "<a>".repeat(100);
    let err = first_error(4096, &with_hdr(&body));
    assert!(matches!(err, XmppError::Forbidden(_)), "{err}");
}

// ---- forbidden constructs ----------------------------------------------------

#[test]
fn dtd_is_refused() {
    let err = first_error(
        4096,
        format!("<?xml version='1.0'?><!DOCTYPE stream:stream>{HDR}").as_bytes(),
    );
    assert!(matches!(err, XmppError::Forbidden(_)), "{err}");
    let err = first_error(4096, &with_hdr("<!DOCTYPE x>"));
    assert!(matches!(err, XmppError::Forbidden(_)), "{err}");
}

#[test]
fn entity_declaration_is_refused() {
    for body in [
        "<!ENTITY x 'y'>",
        "<message><!ENTITY x 'y'></message>",
        "<message><!ELEMENT x ANY></message>",
    ] {
        let err = first_error(4096, &with_hdr(body));
        assert!(matches!(err, XmppError::Forbidden(_)), "{body}: {err}");
    }
}

#[test]
fn billion_laughs_is_refused() {
    let doc = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>
<message><gcm xmlns='google:mobile:data'>&lol3;</gcm></message>"#;
    let err = first_error(4096, doc.as_bytes());
    assert!(matches!(err, XmppError::Forbidden(_)), "{err}");
    // and without the DTD the entity is simply undefined
    let err = first_error(
        4096,
        &with_hdr("<message><gcm xmlns='google:mobile:data'>&lol3;</gcm></message>"),
    );
    assert!(matches!(err, XmppError::Xml(_)), "{err}");
}

#[test]
fn processing_instructions_are_refused() {
    for input in [
        with_hdr("<?foo bar?>"),
        with_hdr("<message><?foo bar?></message>"),
        with_hdr("<?xml version='1.0'?>"),
        format!("<?xml-stylesheet href='x'?>{HDR}").into_bytes(),
        format!("<?xmlfoo?>{HDR}").into_bytes(),
    ] {
        let err = first_error(4096, &input);
        assert!(matches!(err, XmppError::Forbidden(_)), "{err}");
    }
    // The XML declaration before a header is fine, also after a restart.
    let ok = run(
        4096,
        format!("<?xml version='1.0' encoding='UTF-8'?>\n{HDR}").as_bytes(),
    )
    .unwrap();
    assert_eq!(ok.len(), 1);
}

#[test]
fn malformed_input_is_an_xml_error() {
    for body in [
        "<message><a></b></message>",
        "<message><x:y/></message>",
        "<message><gcm xmlns='google:mobile:data'>&bogus;</gcm></message>",
        "<message><gcm xmlns='google:mobile:data'>&#0;</gcm></message>",
        "<message id='1' id='2'/>",
        "text outside",
        "<![CDATA[x]]>",
        "</other>",
        "<message><!-x --></message>",
        "<message><![CDAT[x]]></message>",
    ] {
        let err = first_error(4096, &with_hdr(body));
        assert!(matches!(err, XmppError::Xml(_)), "{body}: {err:?}");
    }
    let mut bad = with_hdr("<message><gcm xmlns='google:mobile:data'>");
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"</gcm></message>");
    assert!(matches!(first_error(4096, &bad), XmppError::Xml(_)));
    // header problems
    assert!(matches!(
        first_error(4096, b"<foo>"),
        XmppError::Protocol(_)
    ));
    assert!(matches!(first_error(4096, b"hello"), XmppError::Xml(_)));
    assert!(matches!(
        first_error(4096, b"</stream:stream>"),
        XmppError::Xml(_)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes after a valid header, in arbitrary chunks: no panic,
    /// bounded buffer.
    #[test]
    fn never_panics_on_garbage(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        points in proptest::collection::vec(0usize..600, 0..8),
    ) {
        let input = with_hdr("");
        let mut all = input;
        all.extend_from_slice(&body);
        let points = points.into_iter().filter(|p| *p <= all.len()).collect();
        let _ = run_chunks(256, split_at_points(&all, points));
    }

    /// Garbage made of XML-ish tokens hits the interesting scanner states.
    #[test]
    fn never_panics_on_xmlish_garbage(
        tokens in proptest::collection::vec(
            prop::sample::select(vec![
                "<", ">", "/", "/>", "</", "<!", "<!--", "-->", "<![CDATA[", "]]>", "<?", "?>",
                "'", "\"", "=", "a", "message", "gcm", " ", "\n", "&", "&amp;", "&#x41;", ":",
                "xmlns='google:mobile:data'", "<message>", "</message>", "</stream:stream>",
                "<?xml ", "<!DOCTYPE", "\u{e9}",
            ]),
            0..80,
        ),
        chunk in 1usize..20,
    ) {
        let mut all = with_hdr("");
        for t in tokens {
            all.extend_from_slice(t.as_bytes());
        }
        let _ = run_chunks(200, all.chunks(chunk));
    }
}

// ---- escaping round trip -----------------------------------------------------

fn xml_char() -> impl Strategy<Value = char> {
    any::<char>().prop_filter("XML 1.0 Char", |c| {
        matches!(*c, '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    })
}

fn trim_xml(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

fn roundtrip(id: &str, json: &str, prefixed: bool) -> Message {
    let stanza = if prefixed {
        writer::gcm_message_prefixed(Some(id), json)
    } else {
        writer::gcm_message(Some(id), json)
    };
    let evs = run(1 << 20, &with_hdr(&stanza)).unwrap();
    match &evs[1] {
        Event::Message(m) => m.clone(),
        other => panic!("{other:?}"),
    }
}

proptest! {
    #[test]
    fn writer_reader_roundtrip_any_text(
        s in proptest::collection::vec(xml_char(), 0..200).prop_map(|v| v.into_iter().collect::<String>()),
        id in proptest::collection::vec(xml_char(), 0..20).prop_map(|v| v.into_iter().collect::<String>()),
        prefixed in any::<bool>(),
    ) {
        let m = roundtrip(&id, &s, prefixed);
        prop_assert_eq!(m.gcm.as_deref(), Some(trim_xml(&s)));
        prop_assert_eq!(m.id.as_deref(), Some(id.as_str()));
    }

    #[test]
    fn writer_reader_roundtrip_jsonish(
        s in r#"\{("[a-z<>&'" \\]{0,8}":"[^\x00-\x1f]{0,20}",?){0,5}\}"#,
    ) {
        let m = roundtrip("1", &s, false);
        prop_assert_eq!(m.gcm.as_deref(), Some(s.as_str()));
        let mut buf = Vec::new();
        writer::append_gcm_message(&mut buf, Some("1"), &s);
        prop_assert_eq!(buf, writer::gcm_message(Some("1"), &s).into_bytes());
    }
}

#[test]
fn roundtrip_of_entities_and_markup_in_json() {
    let json = r#"{"to":"a<b>&c","data":{"x":"]]>","y":"&amp; &lt;","z":"'\"\r\n"}}"#;
    assert_eq!(
        roundtrip("i&<>\"'\n\t", json, false).gcm.as_deref(),
        Some(json)
    );
    assert_eq!(roundtrip("2", json, true).gcm.as_deref(), Some(json));
    assert_eq!(
        roundtrip("i&<>\"'\n\t\r", json, true).id.as_deref(),
        Some("i&<>\"'\n\t\r")
    );
}

// ---- generated sessions ------------------------------------------------------

#[derive(Debug, Clone)]
struct Gen {
    id: Option<String>,
    json: String,
    prefixed: bool,
    keepalive: bool,
}

fn gen_stanza() -> impl Strategy<Value = Gen> {
    (
        proptest::option::of("[a-z0-9:&<>\"' -]{0,12}"),
        r#"\{"[a-z]{1,5}":"[^\x00-\x1f]{0,30}"\}"#,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(id, json, prefixed, keepalive)| Gen {
            id,
            json,
            prefixed,
            keepalive,
        })
}

proptest! {
    /// Writer-made sessions of random messages, fed in random chunks, give
    /// back exactly what was written.
    #[test]
    fn generated_sessions_survive_any_split(
        stanzas in proptest::collection::vec(gen_stanza(), 1..12),
        points in proptest::collection::vec(0usize..4000, 0..30),
    ) {
        let mut input = HDR.as_bytes().to_vec();
        let mut expected = vec![Event::StreamStart {
            id: Some("i".into()),
            from: Some("x".into()),
            to: None,
        }];
        for g in &stanzas {
            let s = if g.prefixed {
                writer::gcm_message_prefixed(g.id.as_deref(), &g.json)
            } else {
                writer::gcm_message(g.id.as_deref(), &g.json)
            };
            input.extend_from_slice(s.as_bytes());
            expected.push(Event::Message(Message {
                id: g.id.clone(),
                gcm: Some(g.json.clone()),
                ..Message::default()
            }));
            if g.keepalive {
                input.extend_from_slice(writer::KEEPALIVE);
                expected.push(Event::Keepalive);
            }
        }
        input.extend_from_slice(writer::STREAM_END.as_bytes());
        expected.push(Event::StreamEnd);
        let points = points.into_iter().filter(|p| *p <= input.len()).collect();
        let got = run_chunks(4096, split_at_points(&input, points)).unwrap();
        prop_assert_eq!(got, expected);
    }
}
