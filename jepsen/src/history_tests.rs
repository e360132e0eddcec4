//! Tests of the history schema (the exact JSON lines), the writer and loader, and pairing.

use super::*;

/// Goal: the documented JSON lines parse into the intended events and serialize back to the
/// same JSON, so the harness, the checkers and external tools agree on the schema.
#[test]
fn documented_json_lines_round_trip() {
    let lines = [
        r#"{"kind":"op","phase":"invoke","process":3,"op_id":7,"f":"generate_batch","worker":"w1","time_ns":1000,"wall_ms":1704067200100,"count":5}"#,
        r#"{"kind":"op","phase":"ok","process":3,"op_id":7,"f":"generate_batch","worker":"w1","time_ns":2000,"wall_ms":1704067200101,"value":{"ranges":[[4194304,5]]},"worker_id":1,"token":4096}"#,
        r#"{"kind":"op","phase":"fail","process":3,"op_id":8,"f":"generate","worker":"w1","time_ns":3000,"wall_ms":1704067200102,"error":"UNAVAILABLE: parked (LEASE_EXPIRED)"}"#,
        r#"{"kind":"registry","phase":"invoke","process":9,"op_id":1,"f":"acquire","worker_id":1000,"holder":"r9","time_ns":10}"#,
        r#"{"kind":"registry","phase":"ok","process":9,"op_id":1,"f":"acquire","worker_id":1000,"holder":"r9","time_ns":20,"result":{"outcome":"granted","worker_id":1000,"token":8192}}"#,
        r#"{"kind":"registry","phase":"fail","process":9,"op_id":2,"f":"renew","worker_id":1000,"token":1,"time_ns":30,"result":{"outcome":"rejected","reason":"fenced"},"error":"FAILED_PRECONDITION: FENCED: stale token"}"#,
        r#"{"kind":"registry","phase":"ok","process":9,"op_id":3,"f":"get","worker_id":1000,"time_ns":40,"result":{"outcome":"lease","holder":null,"token":0}}"#,
        r#"{"kind":"registry","phase":"ok","process":9,"op_id":4,"f":"release","worker_id":1000,"token":8192,"time_ns":50,"result":{"outcome":"released"}}"#,
        r#"{"kind":"nemesis","phase":"start","name":"partition-halves","time_ns":5,"wall_ms":1704067200000,"detail":"n1 n2 | n3 n4 n5"}"#,
        r#"{"kind":"lease","worker":"w1","event":"parked","worker_id":1,"token":4096,"deadline_wall_ms":1704067205000,"reason":"LEASE_EXPIRED","time_ns":60,"wall_ms":1704067205001}"#,
        r#"{"kind":"lease","worker":"w1","event":"renewed","worker_id":1,"token":4096,"deadline_wall_ms":1704067209000,"deadline_mono_ns":9000000000,"time_ns":70,"wall_ms":1704067206000}"#,
        r#"{"kind":"lease","worker":"c1","event":"acquired","worker_id":2,"token":8192,"deadline_wall_ms":1704067209000,"holder":"w1/0/ab12","time_ns":75,"wall_ms":1704067206000}"#,
        r#"{"kind":"process","process":"c1","event":"cloned","copy_of":"w1","time_ns":80,"wall_ms":1704067206010}"#,
        r#"{"kind":"process","process":"w1","event":"exited","code":1,"time_ns":90,"wall_ms":1704067206020}"#,
        r#"{"kind":"process","process":"w1","event":"restarted","time_ns":95,"wall_ms":1704067207020}"#,
    ];
    for line in lines {
        let event: Event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let back = serde_json::to_value(&event).unwrap();
        let original: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(back, original, "{line}");
    }
}

/// Goal: the builder helpers produce the fields the schema promises.
#[test]
fn client_op_builders_fill_completion_fields() {
    let invoke = ClientOp::invoke(1, 2, GenerateFn::Generate, "w2", 10, 100);
    let ok = invoke.ok(20, 101, vec![IdRange { first: 5, count: 1 }], Some((3, 44)));
    assert_eq!((ok.phase, ok.worker_id, ok.token, ok.time_ns), (Phase::Ok, Some(3), Some(44), 20));
    let info = invoke.failed(Phase::Info, 30, 102, "DEADLINE_EXCEEDED: timeout");
    assert_eq!(
        (info.phase, info.value, info.error.as_deref()),
        (Phase::Info, None, Some("DEADLINE_EXCEEDED: timeout"))
    );
}

/// Goal: what the writer appends, the loader reads back, across two writer sessions.
#[test]
fn writer_appends_and_load_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let first = Event::Op(ClientOp::invoke(1, 1, GenerateFn::Generate, "w1", 1, 2));
    let second = Event::Nemesis(NemesisEvent {
        phase: NemesisPhase::Stop,
        name: "pause".into(),
        time_ns: 5,
        wall_ms: 6,
        detail: String::new(),
    });
    {
        let mut w = HistoryWriter::open(&path).unwrap();
        w.append(&first).unwrap();
        w.flush().unwrap();
    }
    let mut w = HistoryWriter::open(&path).unwrap();
    w.append(&second).unwrap();
    w.flush().unwrap();
    assert_eq!(load(&path).unwrap(), vec![first, second]);
}

/// Goal: a corrupt line is reported with its line number, not skipped silently.
#[test]
fn load_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let good = r#"{"kind":"nemesis","phase":"start","name":"x","time_ns":1}"#;
    std::fs::write(&path, format!("{good}\n\n{{\"kind\":\"op\"\n")).unwrap();
    match load(&path) {
        Err(HistoryError::Parse { line, .. }) => assert_eq!(line, 3),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

/// Goal: invokes pair with their own completion; unfinished ops count as info; orphan
/// completions are dropped.
#[test]
fn pairing_matches_process_and_op_id() {
    let a = ClientOp::invoke(1, 1, GenerateFn::Generate, "w1", 10, 0);
    let b = ClientOp::invoke(2, 1, GenerateFn::Generate, "w1", 11, 0);
    let b_ok = b.ok(15, 0, vec![IdRange { first: 9, count: 2 }], None);
    let orphan = ClientOp::invoke(3, 9, GenerateFn::Generate, "w1", 1, 0).failed(Phase::Fail, 2, 0, "X: y");
    let events: Vec<Event> = [a, b, b_ok, orphan].into_iter().map(Event::Op).collect();
    let ops = client_ops(&events);
    assert_eq!(ops.len(), 2);
    assert_eq!((ops[0].outcome(), ops[0].complete_ns()), (Phase::Info, None));
    assert_eq!((ops[1].outcome(), ops[1].complete_ns(), ops[1].id_bounds()), (Phase::Ok, Some(15), Some((9, 10))));
}

/// Goal: nemesis windows pair start/stop by name, overlapping faults included.
#[test]
fn nemesis_windows_pair_by_name() {
    let n = |phase, name: &str, t| {
        Event::Nemesis(NemesisEvent { phase, name: name.into(), time_ns: t, wall_ms: 0, detail: String::new() })
    };
    let events = vec![
        n(NemesisPhase::Start, "a", 10),
        n(NemesisPhase::Start, "b", 15),
        n(NemesisPhase::Stop, "a", 20),
        n(NemesisPhase::Start, "a", 30),
    ];
    let w = nemesis_windows(&events);
    let spans: Vec<_> = w.iter().map(|w| (w.name.as_str(), w.start_ns, w.stop_ns)).collect();
    assert_eq!(spans, vec![("a", 10, Some(20)), ("b", 15, None), ("a", 30, None)]);
    assert!(w[0].contains(10) && !w[0].contains(20) && w[1].contains(1_000_000));
}

/// Goal: range ends are computed without overflow and empty ranges have no last ID.
#[test]
fn id_range_last() {
    assert_eq!(IdRange { first: 10, count: 3 }.last(), Some(12));
    assert_eq!(IdRange { first: 10, count: 0 }.last(), None);
}
