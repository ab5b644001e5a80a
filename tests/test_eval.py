"""`voicebot eval`: simulated callers phoning the real server, and the judges that score the calls.

The phone test runs on the random-weight test models, where whisper hears nonsense and the voice is
a tone: it pins the plumbing (the signed webhook, the stream token, Twilio's frames both ways, the
call log read as it grows, the database judged after each call, the report), not the figures.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pipeline.cli import main
from pipeline.sim.eval import EvalOptions, run_eval
from pipeline.sim.judge import judge
from pipeline.sim.personas import (
    SLOTS,
    PersonaError,
    find_intent,
    load_personas,
    min_turns,
    parse_line,
    readback_mismatches,
)
from pipeline.sim.report import format_report, stalls
from pipeline.sim.server import CallLog

TODAY = dt.date(2026, 12, 1)


# ------------------------------------------------------------------------------------ the personas
def test_the_shipped_personas_cover_the_callers_the_design_names():
    personas = load_personas().personas
    assert len(personas) >= 20 and sum(p.language == "ja" for p in personas) >= 15
    assert {"book", "change", "cancel", "nothing"} <= {p.wants for p in personas}
    assert any(p.faq for p in personas) and any(p.correction for p in personas) and any(p.readback_no for p in personas)
    assert any(p.backchannel and p.backchannel.during == "greeting" for p in personas)
    assert any(p.backchannel and p.backchannel.during != "greeting" for p in personas)
    hesitations = [p for p in personas if any(isinstance(x, int) and 400 <= x <= 900
                                              for line in p.all_lines() for x in parse_line(line).parts)]
    assert len(hesitations) >= 3


def test_every_shipped_persona_gets_what_it_wants_from_the_rules_agent_in_text(test_models_dir, tmp_path):
    # The callers typed into the agent: their cues and lines fit the bot's questions, and their
    # bookings, changes and cancellations come out right when every word is heard.
    report = run_eval(EvalOptions(config=str(test_models_dir / "config.yaml"), text=True, workdir=str(tmp_path)))
    wrong = {c["id"]: c["why"] for c in report["calls"] if not c["booked_right"]}
    assert not wrong, format_report(report)
    assert report["overall"]["booked_right_pct"] == 100.0
    by_id = {c["id"]: c for c in report["calls"]}
    assert by_id["ja-05-readback-no"]["turns"] == by_id["ja-05-readback-no"]["min_turns"]


@pytest.mark.parametrize("text,intent", [
    ("お電話ありがとうございます。ご予約を承ります。ご来店のご希望日をお聞かせください。", "date"),
    ("タナカ様ですね。ご連絡先のお電話番号をお願いいたします。", "phone"),
    ("お電話番号を承りました。アレルギーやお祝いなど、何かご要望はございますか。", "note"),
    ("ご予約内容を確認いたします。明日、午後7時から、3名様、お名前は田中様、お電話番号はゼロ、キュウ、以上でよろしいでしょうか。",
     "confirm"),
    ("恐れ入ります、もう一度お願いできますか。「19時」や「午後7時半」のようにおっしゃってください。", "time"),
    ("恐れ入ります、もう一度お願いできますか。", "repeat"),
    ("お電話ありがとうございました。ご来店をお待ちしております。失礼いたします。", "ended"),
    ("Thank you, John Smith. What phone number can we reach you at?", "phone"),
    ("I have your booking: tomorrow at 7 pm, 2 people, under the name John Smith. What would you like to change?",
     "change_what"),
    ("a sentence with no question in it", None),
])
def test_the_caller_answers_the_last_question_of_a_reply(text, intent):
    pset = load_personas()
    lang = "en" if text.isascii() else "ja"
    assert find_intent(text, pset.cues[lang]) == intent


def test_a_read_back_is_checked_against_what_the_caller_wants():
    want = {"date": "2026-12-02", "time": "19:00", "party_size": 3, "phone": "09012345678"}
    right = ("明日、12月2日水曜日、午後7時から、3名様、お名前は田中様、お電話番号はゼロ、キュウ、ゼロ、の、イチ、ニー、サン、"
             "ヨン、の、ゴー、ロク、ナナ、ハチ、以上でよろしいでしょうか。")
    assert readback_mismatches(right, want, "ja") == []
    wrong = right.replace("午後7時", "午後8時").replace("3名様", "4名様").replace("ナナ、ハチ", "ナナ、ナナ")
    assert readback_mismatches(wrong, want, "ja") == ["party", "time", "phone"]
    assert readback_mismatches("お電話番号は、今おかけの末尾ゴー、ロク、ナナ、ハチの番号でよろしいでしょうか。", want, "ja") == []
    named = {**want, "name": "田中"}
    assert readback_mismatches("お名前はタナカ様でよろしいでしょうか。", named, "ja") == []
    assert readback_mismatches("お名前をミズノチ様に変更してよろしいでしょうか。", named, "ja") == ["name"]
    assert readback_mismatches("Is the name John Smith?", {"name": "John Smith"}, "en") == []
    assert readback_mismatches("Is the name Jon Smithers?", {"name": "John Smith"}, "en") == ["name"]
    assert readback_mismatches("the one ending in one two three four?", want, "en") == ["phone"]
    en = "tomorrow, December 2nd at 7:30 pm, 3 people, phone number zero nine zero, one two three four, five six seven eight."
    assert readback_mismatches(en, want, "en") == ["time"]


def _caller(pid="ja-01-basic", store_url="sqlite://"):
    from pipeline.sim.judge import Bookings

    pset = load_personas()
    return Bookings(pset, store_url, TODAY, 3).plan(pset.by_id(pid)).caller


def test_a_caller_asked_to_go_on_with_a_number_says_the_rest_or_all_of_it_again():
    caller = _caller()  # 090-1234-5678
    rest = caller.react("ゼロ、キュウ、ゼロ、イチ、ニー、サン、ヨンですね。続きをお願いいたします。")
    assert rest.kind == "phone_rest" and rest.line.text == "ゴーロクナナハチです"
    wrong = caller.react("ゼロ、キュウ、ゼロ、イチ、ニー、ニーですね。続きをお願いいたします。")
    assert wrong.kind == "phone" and wrong.line.text.startswith("いいえ、ゼロキューゼロ")


def test_a_number_the_bot_did_not_get_is_said_again_differently_and_slower():
    caller = _caller()
    asked = "お電話番号は市外局番から10桁か11桁でお願いいたします。恐れ入ります、「090、1234、5678」のように、数字をひとつずつおっしゃってください。"
    said = [caller.react(asked) for _ in range(4)]
    assert len({s.line.raw for s in said[:3]}) == 3  # in groups, groups further apart, digit by digit
    assert [s.repeat for s in said] == [0, 0, 0, 1]  # then the first way again, slower
    voice = caller.persona.voice.voice("ja")
    assert voice.slower(0.85).speed < voice.speed


def test_a_caller_who_wants_to_cancel_says_so_again_instead_of_booking(tmp_path):
    caller = _caller("ja-18-cancel", f"sqlite:///{tmp_path / 'r.db'}")  # its booking is put there first
    asked = "恐れ入ります、もう一度お願いできますか。「12月24日」や「来週の金曜日」のようにおっしゃってください。"
    assert caller.react(asked).kind == "date"  # not a new booking's question by its words: answered
    new = "12月24日、木曜日ですね。何時ごろのご来店をご希望でしょうか。"
    again = caller.react(new)
    assert again.kind == "restate" and "キャンセル" in again.line.text
    assert caller.react(new).kind == "restate" and caller.react(new).kind == "done"


def test_the_fewest_turns_count_what_the_first_line_gives():
    by_id = {p.id: p for p in load_personas().personas}
    assert min_turns(by_id["ja-01-basic"]) == 1 + 3 + 2  # open (date, time, party), name, phone, note, yes, done
    assert min_turns(by_id["ja-03-stepwise"]) == 1 + len(SLOTS) + 2
    assert min_turns(by_id["ja-18-cancel"]) == 4  # open, phone, yes, done


def test_a_bad_persona_file_is_named_with_its_entry(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("cues: {ja: {}}\ndefaults: {ja: {}}\npersonas:\n  - id: x1\n    open: はい\n"
                   "    booking: {date: tomorrow, time: '19:00', party: 2, name: 田中, phone: '0901234'}\n",
                   encoding="utf-8")
    with pytest.raises(PersonaError) as e:
        load_personas(bad)
    message = str(e.value)
    assert "personas.0 (x1).booking.date" in message and "+N" in message and "phone" in message
    assert "\n" not in message  # the command's error is one line


# ------------------------------------------------------------------------------------ the judges
def _row(id="R-1", **kw):
    return {"id": id, "date": "2026-12-02", "time": "19:00", "party_size": 3, "name": "田中", "phone": "09012345678",
            "note": None, **kw}


def test_a_booking_is_right_only_as_wanted_and_alone():
    want = {k: v for k, v in _row().items() if k != "id"}
    assert judge("book", want, None, {}, {"R-1": _row()}, "ja").right
    assert judge("book", want, None, {}, {"R-1": _row(name="たなか様")}, "ja").right  # the same reading
    v = judge("book", want, None, {}, {"R-1": _row(time="20:00", name="かなか")}, "ja")
    assert not v.right and "time 20:00 (wanted 19:00)" in v.why and "name" in v.why
    assert not judge("book", want, None, {}, {}, "ja").right
    assert not judge("book", want, None, {"R-0": _row("R-0")}, {"R-1": _row()}, "ja").right  # and one gone


def test_a_change_or_cancel_acts_on_its_booking_only():
    before = {"R-1": _row(), "R-2": _row("R-2", name="佐藤")}
    moved = {**before, "R-1": _row(time="20:00")}
    assert judge("change", _row(time="20:00"), "R-1", before, moved, "ja").right
    assert not judge("change", _row(time="20:00"), "R-1", before, before, "ja").right
    assert judge("cancel", _row(), "R-1", before, {"R-2": before["R-2"]}, "ja").right
    assert not judge("cancel", _row(), "R-1", before, {"R-1": before["R-1"]}, "ja").right
    assert judge("nothing", None, None, before, before, "ja").right
    assert not judge("nothing", None, None, before, {}, "ja").right


def test_the_call_log_is_read_as_it_is_appended(tmp_path):
    path = tmp_path / "calls.jsonl"
    tail = CallLog(path)
    tail.poll()  # not there yet
    path.write_text(json.dumps({"event": "turn", "call_id": "a", "reply": "x"}) + "\n" + '{"event": "tu', encoding="utf-8")
    tail.poll()
    assert [r["reply"] for r in tail.turns("a")] == ["x"]
    with path.open("a", encoding="utf-8") as f:
        f.write('rn", "call_id": "a", "reply": "y"}\n')
    tail.poll()
    assert [r["reply"] for r in tail.turns("a")] == ["x", "y"] and tail.turns("b") == []


def test_a_stall_is_audio_running_dry_mid_reply():
    frame = {"event": "media", "media": {"payload": "/" * 216}}  # 160 mu-law bytes: 20 ms
    received = [(0.0, frame), (0.02, frame), (1.5, frame), (1.52, frame), (1.9, {"event": "clear"}), (4.0, frame)]
    assert stalls(received, 0.0, 10.0) == 2


# ------------------------------------------------------------------------------------ the command
def test_an_unknown_persona_is_one_line_and_exit_1(test_models_dir, capsys):
    code = main(["eval", "--config", str(test_models_dir / "config.yaml"), "--only", "nobody"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: --only: no persona nobody") and "\n" not in err


def test_missing_models_stop_the_eval_with_the_servers_reason(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("stt: {model: nowhere}\ntts: {model: none.onnx, voices: none.bin}\n", encoding="utf-8")
    code = main(["eval", "--config", str(cfg), "--calls", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: voicebot serve exited") and "\n" not in err


def test_eval_phones_the_real_server_and_reports_every_call(test_models_dir, tmp_path, capsys):
    # Two callers on the test models: a booking, and a cancellation whose booking the run puts there
    # itself (its persona did not run). Whisper hears nonsense, so nothing gets booked; every line
    # must still be answered and every call end.
    code = main(["eval", "--config", str(test_models_dir / "config.yaml"), "--only", "ja-01-basic,ja-18-cancel",
                 "--workdir", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert report["settings"]["mode"] == "phone" and report["settings"]["agent"] == "rules"
    assert [c["id"] for c in report["calls"]] == ["ja-01-basic", "ja-18-cancel"]
    assert report["overall"]["calls"] == 2 and report["overall"]["unanswered_calls"] == 0
    keys = {"booked_right", "turns", "min_turns", "gap_p50_ms", "gap_p90_ms", "cut_offs", "false_barge_ins",
            "silences_over_2s", "acked", "stalls", "stt_error", "bot_error"}
    for call in report["calls"]:
        assert keys <= set(call), call
        assert call["error"] is None and call["ended_by"] == "bot" and call["turns"] >= 1, call
        assert call["gap_p50_ms"] is not None and call["stt_error"] is not None
    assert report["calls"][1]["seeded"]  # the cancellation acted on a booking the run made for it
    for detail in report["details"]:
        assert detail["greeting"].startswith("お電話ありがとうございます")
        assert all(line["first_audio_s"] is not None for line in detail["lines"]), detail["lines"]
        assert all(line["heard"] for line in detail["lines"] if line["turns_logged"])
    # the server really checked Twilio's signature and the stream token
    server_log = (tmp_path / "server.log").read_text(encoding="utf-8")
    assert "signatures checked" in server_log and "refused" not in server_log
    table = format_report(report)
    assert table.splitlines()[0].startswith("CALL") and "overall" in table
