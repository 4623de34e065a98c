# ruff: noqa: E501  (phrase tables read best one entry per line)
"""Ticket summaries: support tickets (e-mail threads, chat transcripts) → a concise summary for the next agent.

Each ticket is composed from facts (the problem, what the customer already tried, what they ask for, how urgent it
is and why) and written in one of several styles with the noise real tickets carry: greetings, quoted earlier
replies, signatures, "sent from my phone", timestamps, typos, chatter. The reference summary is written from the same
facts, in one fixed shape:

    Problem: notes do not sync between phone and laptop. Tried: reinstalling the app, clearing the cache.
    Requested: restore the lost notes. Urgency: high (client meeting tomorrow).

Each row's `meta.facts` lists the facts as alternative patterns, so the task metric `key_fact_recall` checks that a
summary states them (ROUGE-L alone rewards copying words, not getting the facts). The test split is written in two
styles never seen in training (an agent's phone-call notes and a forwarded e-mail chain), with held-out phrasings of
each fact half of the time.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tasktune.examples.kit import pick, register, typos, write_splits

TRAIN_STYLES = ["email", "email_thread", "chat", "webform", "mobile"]
TEST_STYLES = ["phone_notes", "forwarded"]


@dataclass(frozen=True)
class Fact:
    summary: str  # how the summary states it
    pattern: tuple[str, ...]  # alternatives a summary must match to state it
    train: tuple[str, ...]  # how customers say it in training tickets
    test: tuple[str, ...]  # held-out phrasings (test split only, half of the time)


PROBLEMS = [
    Fact("notes do not sync between devices", (r"sync",),
         ("my notes are not syncing between my phone and my laptop", "sync stopped working, my laptop doesn't get the notes I write on my phone", "nothing syncs anymore between my devices"),
         ("whatever I write on the tablet never shows up on the desktop",)),
    Fact("the app crashes on start", (r"crash", r"(?:won't|doesn't|does not|fails to) (?:start|open|launch)"),
         ("the app crashes as soon as I open it", "Driftwood crashes on startup every time", "it crashes right after the splash screen"),
         ("the program dies the second I launch it",)),
    Fact("notes were lost", (r"lost|missing|disappeared|gone|deleted",),
         ("a whole notebook of mine disappeared", "I lost about 20 notes from last week", "my notes are just gone"),
         ("a folder full of meeting notes has vanished",)),
    Fact("PDF export fails", (r"pdf",),
         ("exporting to PDF gives an error", "PDF export doesn't work anymore", "I can't export my notes as PDF"),
         ("saving a note out as a pdf file just errors",)),
    Fact("the customer was charged twice", (r"charged twice|double charge|two charges|twice|duplicate",),
         ("I was charged twice this month", "there are two charges for my subscription on my card", "you billed me double"),
         ("my statement shows the same Driftwood payment two times",)),
    Fact("the customer cannot log in", (r"log ?in|sign ?in|access",),
         ("I can't log in to my account", "login keeps failing with my correct password", "I'm locked out of my account"),
         ("it won't let me into my account even with the right password",)),
    Fact("search returns no results", (r"search",),
         ("search doesn't find anything even though the notes exist", "searching returns no results", "search is broken, finds nothing"),
         ("looking up a word I know is in my notes gives nothing back",)),
    Fact("reminders arrive late", (r"reminder|notification",),
         ("reminders arrive hours late", "my reminders don't go off on time", "notifications for reminders come late"),
         ("the alerts I set for notes ping me way after the time",)),
]  # fmt: skip
TRIED = [
    Fact("reinstalling the app", (r"reinstall",), ("I reinstalled the app", "I deleted and reinstalled Driftwood"), ("I removed the app and put it back on",)),
    Fact("logging out and in", (r"log(?:ged|ging)? ?(?:out|in|off)|sign(?:ed|ing)? ?(?:out|in)",), ("I logged out and back in", "I signed out and signed in again"), ("I did the log off / log on thing",)),
    Fact("clearing the cache", (r"cache",), ("I cleared the cache", "I emptied the app cache in settings"), ("I wiped the cached data",)),
    Fact("restarting the device", (r"restart|reboot",), ("I restarted my phone", "I rebooted the computer"), ("I turned the whole machine off and on again",)),
    Fact("updating to the latest version", (r"updat|latest version|upgrad",), ("I updated to the latest version", "I installed the newest update"), ("I made sure I'm on the newest release",)),
    Fact("checking the internet connection", (r"connection|network|wi-?fi|internet",), ("I checked my internet connection", "I tried another wifi network"), ("my connection is fine, I tested it",)),
]  # fmt: skip
REQUESTS = [
    Fact("a refund", (r"refund|money back",), ("I want a refund", "please refund me"), ("I'd like my money returned",)),
    Fact("restoring the lost notes", (r"restor|recover|get (?:the |my )?notes back",), ("please restore my notes", "can you recover what I lost"), ("I need you to bring my notes back",)),
    Fact("a call back", (r"call",), ("please call me back", "can someone phone me"), ("I'd prefer someone rings me",)),
    Fact("a fix or a workaround", (r"fix|workaround",), ("please fix this", "I need a fix or at least a workaround"), ("tell me how to get around this",)),
    Fact("an explanation of the cause", (r"explain|explanation|cause|why",), ("I want to know why this happens", "please explain what went wrong"), ("I'd like to understand what's behind this",)),
]  # fmt: skip
URGENCY = {  # level -> (reasons said in training, held-out reasons); the summary names level and reason
    "urgent": (
        ("I have a client presentation in two hours", "our board meeting starts at noon today"),
        ("the auditor arrives in an hour",),
    ),
    "high": (
        ("I need it for a deadline tomorrow", "my whole team is blocked"),
        ("the project hand-off is tomorrow morning",),
    ),
    "normal": (("", ""), ("",)),
    "low": (("no rush, whenever you get a chance", "it's not urgent"), ("take your time with this one",)),
}
URGENCY_REASON = {  # the summary's wording of each reason
    "I have a client presentation in two hours": "client presentation in two hours",
    "our board meeting starts at noon today": "board meeting today",
    "the auditor arrives in an hour": "auditor arrives in an hour",
    "I need it for a deadline tomorrow": "deadline tomorrow",
    "my whole team is blocked": "whole team blocked",
    "the project hand-off is tomorrow morning": "project hand-off tomorrow",
    "no rush, whenever you get a chance": "no rush",
    "it's not urgent": "not urgent",
    "take your time with this one": "no rush",
}
NAMES = (
    "Maria Lopez",
    "Tom Becker",
    "Priya Raman",
    "Lukas Brandt",
    "Chen Wei",
    "Ana Souza",
    "Dave Miller",
    "Sofia Rossi",
)
COMPANIES = ("Acme GmbH", "Northwind Ltd", "Blue Harbor Studio", "Keller & Sons", "Orbit Analytics")
CHATTER = ("hope you're well", "sorry for the long message", "love the app otherwise", "it's been a long week",
           "I've been a customer for years", "by the way the new icon looks great")  # fmt: skip
AGENT_REPLIES = ("Thanks for contacting Driftwood Support. Could you tell us which device and app version you use?",
                 "Thank you for your message. We're looking into it and will get back to you shortly.",
                 "Hi, thanks for reaching out! Have you tried updating to the latest version?")  # fmt: skip
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri")

INSTRUCTION = """You summarise customer-support tickets for Driftwood, a note-taking app, so that the next agent \
understands the case at a glance. The ticket below may be an e-mail (with greetings, signatures and quoted earlier \
replies), a thread, a chat transcript or call notes; ignore greetings, signatures, quoted support replies, \
timestamps and small talk.

Write exactly one line in this shape, and nothing else:
Problem: <the customer's problem, in a few words>. Tried: <what the customer already tried, comma-separated, or \
"nothing yet">. Requested: <what the customer asks us to do>. Urgency: <low, normal, high or urgent> (<the reason \
the customer gives, if any>).

Urgency rules: "urgent" when the customer needs it within hours today; "high" for a deadline tomorrow or a blocked \
team; "low" when they say there is no rush; otherwise "normal" (then give no reason). Use the customer's facts only; \
do not invent steps they did not mention and do not propose solutions."""


def _stamp(rng: random.Random) -> str:
    return f"{rng.choice(DAYS)} {rng.randint(1, 28)} {rng.choice(MONTHS)} 2026 {rng.randint(7, 19):02d}:{rng.randint(0, 59):02d}"


def make_record(rng: random.Random, held_out: bool) -> tuple[str, str, dict]:
    """One ticket, its summary and its facts, all from the same sampled facts."""
    problem = rng.choice(PROBLEMS)
    tried = rng.sample(TRIED, k=rng.choice([0, 1, 1, 2, 2, 3]))
    request = rng.choice(REQUESTS)
    level = rng.choice(list(URGENCY))
    reason = pick(rng, *URGENCY[level], held_out)
    facts = {
        "problem": typos(rng, pick(rng, problem.train, problem.test, held_out), 0.05 if rng.random() < 0.4 else 0.0),
        "tried": [pick(rng, t.train, t.test, held_out) for t in tried],
        "request": pick(rng, request.train, request.test, held_out),
        "reason": reason,
        "chatter": rng.sample(CHATTER, k=rng.choice([0, 1, 1, 2])),
        "name": rng.choice(NAMES),
        "company": rng.choice(COMPANIES),
    }
    style = rng.choice(TEST_STYLES if held_out else TRAIN_STYLES)
    text = render_ticket(rng, style, facts)
    why = f" ({URGENCY_REASON[reason]})" if reason else ""
    tried_s = ", ".join(t.summary for t in tried) or "nothing yet"
    summary = f"Problem: {problem.summary}. Tried: {tried_s}. Requested: {request.summary}. Urgency: {level}{why}."
    key_facts = [list(problem.pattern), *(list(t.pattern) for t in tried), list(request.pattern), [rf"\b{level}\b"]]
    return text, summary, {"style": style, "urgency": level, "facts": key_facts}


def _body(rng: random.Random, f: dict) -> list[str]:
    """The customer's sentences, in an order that varies."""
    s = lambda t: t[0].upper() + t[1:] if t else t  # noqa: E731
    lines = [s(f["problem"]) + "."]
    if f["tried"]:
        lines.append(
            s(" and ".join(f["tried"])) + rng.choice([", but nothing helped.", ", no luck.", ". Still the same."])
        )
    lines.append(s(f["request"]) + ".")
    if f["reason"]:
        lines.insert(rng.randrange(len(lines) + 1), s(f["reason"]) + ".")
    for c in f["chatter"]:
        lines.insert(rng.randrange(len(lines) + 1), s(c) + ".")
    return lines


def _signature(rng: random.Random, f: dict) -> str:
    sig = [rng.choice(["Best,", "Thanks,", "Kind regards,", "Cheers,"]), f["name"]]
    if rng.random() < 0.6:
        sig.append(f"{rng.choice(['Project Manager', 'Analyst', 'Designer', 'Office Admin'])} | {f['company']}")
    if rng.random() < 0.3:
        sig.append("Sent from my iPhone")
    return "\n".join(sig)


def render_ticket(rng: random.Random, style: str, f: dict) -> str:
    body = _body(rng, f)
    first = f["name"].split()[0]
    if style == "email":
        return (f"From: {f['name']}\nDate: {_stamp(rng)}\nSubject: {rng.choice(['Help!!', 'Problem with Driftwood', 'urgent issue', 'Re: my account'])}\n\n"
                f"{rng.choice(['Hi,', 'Hello support,', 'Dear Driftwood team,', 'Hey'])}\n\n{' '.join(body)}\n\n{_signature(rng, f)}")  # fmt: skip
    if style == "email_thread":
        quoted = "\n".join("> " + line for line in [f"On {_stamp(rng)}, Driftwood Support <support@driftwood.app> wrote:",
                                                    rng.choice(AGENT_REPLIES), "", "Best regards,", "The Driftwood team"])  # fmt: skip
        return f"Hi again,\n\n{' '.join(body)}\n\n{_signature(rng, f)}\n\n{quoted}"
    if style == "chat":
        t = [rng.randint(8, 18), rng.randint(0, 50)]
        lines = [f"[{t[0]:02d}:{t[1]:02d}] Agent: Hi, thanks for contacting Driftwood! How can I help?"]
        for i, b in enumerate(body):
            lines.append(f"[{t[0]:02d}:{t[1] + i + 1:02d}] {first}: {b.lower() if rng.random() < 0.5 else b}")
            if i == 0:
                lines.append(
                    f"[{t[0]:02d}:{t[1] + i + 1:02d}] Agent: I'm sorry to hear that. Anything else I should know?"
                )
        return "\n".join(lines)
    if style == "webform":
        return (f"Name: {f['name']}\nEmail: {first.lower()}@{f['company'].split()[0].lower()}.com\nPlan: {rng.choice(['Free', 'Plus', 'Team'])}\n"
                f"Submitted: {_stamp(rng)}\nMessage:\n{' '.join(body)}")  # fmt: skip
    if style == "mobile":
        return (
            " ".join(b.lower().rstrip(".") for b in body)
            + f"\n\nSent from my {rng.choice(['Android', 'iPhone', 'Galaxy'])}"
        )
    if style == "phone_notes":  # held out from training
        notes = [f"Call with {f['name']} ({f['company']}), {_stamp(rng)}, {rng.randint(4, 25)} min"]
        notes += [f"- cust says: {b[0].lower() + b[1:]}" for b in body]
        return "\n".join([*notes, "- agent: told cust we'd follow up by email"])
    if style == "forwarded":  # held out from training
        colleague = rng.choice([n for n in NAMES if n != f["name"]])
        return (f"FYI, see below - can support take this one?\n{colleague.split()[0]}\n\n---------- Forwarded message ---------\n"
                f"From: {f['name']} <{first.lower()}@{f['company'].split()[0].lower()}.com>\nDate: {_stamp(rng)}\n"
                f"To: {colleague}\n\n{rng.choice(['Hi', 'Hey', 'Hello'])} {colleague.split()[0]},\n\n{' '.join(body)}\n\n{_signature(rng, f)}")  # fmt: skip
    raise ValueError(style)


def generate_rows(n: int, seed: int, held_out: bool) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, summary, meta = make_record(rng, held_out)
        rows.append({"input": text, "output": summary, "meta": meta})
    return rows


TASK_YAML = """# Ticket summaries (generated by `tasktune example ticket-summaries`)
# key_fact_recall: share of the ticket's facts (problem, each step tried, request, urgency) the summary states.
name: ticket-summaries
instruction: {instruction}
output:
  kind: text
metric: rouge_l
metrics: [key_fact_recall, summary_words, length_ratio]
data:
  train: train.jsonl
  eval: eval.jsonl
  test: test.jsonl
train:
  method: lora
  epochs: 1
  batch_size: 8
  learning_rate: 1.0e-3
  eval_every: 100
  eval_max_rows: 32
"""


@register("ticket-summaries")
def write_ticket_summaries(out: str | Path, n: int = 2000, seed: int = 0, n_eval: int = 100, n_test: int = 200) -> Path:
    """Write train/eval/test JSONL and task.yaml for the ticket-summary task."""
    return write_splits(out, lambda split, k, s: generate_rows(k, s, held_out=split == "test"),
                        {"train": n, "eval": n_eval, "test": n_test}, seed,
                        {"task.yaml": TASK_YAML.format(instruction=json.dumps(INSTRUCTION))})  # fmt: skip
