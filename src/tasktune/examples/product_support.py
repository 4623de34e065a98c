# ruff: noqa: E501  (fact tables read best one entry per line)
"""Product support: can fine-tuning put a product's facts into the weights, and does the tuned model invent answers?

Two variants, written by `tasktune example NAME`:

- `product-support`: Driftwood, a fictional note-taking app (the one the bug-report example triages), with a product
  sheet of plans, limits, settings, features, policies and known issues. Each fact has several training phrasings of
  its question and two held-out *paraphrases* that only the test split uses. Questions about things the sheet never
  mentions are answered "I don't know, ask support"; the test split asks about other such things than training did.
- `product-support-faq`: the real published FAQ of a company: the English edition of the Swedish Construction FAQ
  by Zaragoza AB (PyPI `zaragoza-construction-faq`, CC BY 4.0), read from the installed package. Training uses the
  FAQ's own questions; the test asks rule-based rewrites of them (never their training wording) and FAQ questions
  whose answers were held out of training (and out of the instruction), whose right answer is to abstain.

The task's instruction carries the whole product sheet (or the trained part of the FAQ), so `tasktune compare`'s
`instruction` method is the baseline "base model with the documentation in its prompt". Rows carry `meta`:
`answerable`, and for known facts `facts` (alternative patterns the answer must state), read by the task metrics
fact_accuracy, invented_answer_rate, abstention_rate and false_abstention_rate (tasktune.task_metrics).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tasktune.examples.kit import ask, register, stable_choice, unique_rows, write_splits

SUPPORT = "support@driftwood.app"


@dataclass(frozen=True)
class Fact:
    topic: str
    sheet: str  # the sentence in the product sheet
    train: tuple[str, ...]  # questions seen in training
    test: tuple[str, ...]  # held-out paraphrases, only in the test split
    answer: str
    facts: tuple[tuple[str, ...], ...]  # what a right answer must state: alternatives per fact


FACTS = [
    Fact("plans", "Driftwood has three plans: Free, Plus and Team.",
         ("What plans does Driftwood have?", "which plans are there", "What subscription tiers do you offer?", "list the driftwood plans"),
         ("Which pricing options can I choose between?", "What kinds of subscription are available for Driftwood?"),
         "Driftwood has three plans: Free, Plus and Team.", (("free",), ("plus",), ("team",))),
    Fact("plus price", "Plus costs $4 per month, or $40 per year.",
         ("How much is Plus?", "what does the plus plan cost", "Price of Driftwood Plus?", "how much do I pay for plus per month"),
         ("What's the monthly fee for the Plus tier?", "If I upgrade to Plus, what will I be charged?"),
         "Plus costs $4 per month, or $40 per year.", ((r"\$ ?4\b", r"4 dollars"),)),
    Fact("team price", "Team costs $8 per user per month.",
         ("How much is the Team plan?", "what does team cost", "Team plan price?", "how much per user for team"),
         ("What do we pay per seat on the Team tier?", "Our company wants the Team plan, what is the cost?"),
         "Team costs $8 per user per month.", ((r"\$ ?8\b", r"8 dollars"), (r"user|seat|person",))),
    Fact("free devices", "The Free plan syncs up to 2 devices.",
         ("How many devices can I use on Free?", "device limit on the free plan", "free plan how many devices",
          "Can I sync more than two devices for free?"),
         ("On the no-cost plan, how many phones and computers can I connect?", "What's the maximum number of devices without paying?"),
         "The Free plan syncs up to 2 devices. Plus and Team have no device limit.", ((r"\b2\b", r"\btwo\b"),)),
    Fact("free storage", "Free includes 1 GB of storage; Plus 50 GB; Team 200 GB per user.",
         ("How much storage does Free have?", "storage on the free plan", "how many GB do I get for free", "Free plan storage limit?"),
         ("How much space do I get if I don't pay?", "What's the storage quota of the free tier?"),
         "Free includes 1 GB of storage. Plus has 50 GB and Team 200 GB per user.", ((r"\b1 ?GB", r"one gigabyte"),)),
    Fact("plus storage", "Free includes 1 GB of storage; Plus 50 GB; Team 200 GB per user.",
         ("How much storage comes with Plus?", "plus storage", "how many GB on plus", "What is the Plus storage limit?"),
         ("If I pay for Plus, how much room do my notes get?", "What's the storage quota of the Plus tier?"),
         "Plus includes 50 GB of storage.", ((r"\b50 ?GB", r"fifty gigabytes"),)),
    Fact("attachment size", "Attachments can be up to 25 MB on Free and 200 MB on Plus and Team.",
         ("What is the maximum attachment size?", "how big can attachments be", "file size limit for attachments", "Max size of a file I attach?"),
         ("Is there a cap on how large an attached file may be?", "How large a PDF can I put into a note?"),
         "Attachments can be up to 25 MB on Free and 200 MB on Plus and Team.", ((r"\b25 ?MB",), (r"\b200 ?MB",))),
    Fact("history", "Note history keeps old versions for 7 days on Free, 90 days on Plus and 1 year on Team.",
         ("How long is note history kept?", "how far back does version history go", "How long are old versions saved?", "note history retention?"),
         ("For how many days can I restore an earlier version of a note?", "How long do you keep previous revisions?"),
         "Note history keeps old versions for 7 days on Free, 90 days on Plus and 1 year on Team.", ((r"\b7 days", r"seven days"), (r"\b90 days", r"ninety days"))),
    Fact("trash", "Deleted notes stay in the trash for 30 days before they are removed for good.",
         ("How long do deleted notes stay in the trash?", "when is the trash emptied", "can I get back a deleted note", "How long until trash is cleared?"),
         ("I removed a note by mistake last week, is it still recoverable?", "After deleting something, how much time do I have to restore it?"),
         "Deleted notes stay in the trash for 30 days, so you can restore them from there until then.", ((r"\b30 days", r"thirty days"), (r"trash",))),
    Fact("dark mode", "Dark mode is in Settings > Appearance > Theme.",
         ("How do I turn on dark mode?", "where is dark mode", "enable dark theme", "How can I switch to the dark theme?"),
         ("The app is too bright at night, can I make it black?", "Where do I change the colour scheme to dark?"),
         "Go to Settings > Appearance > Theme and choose Dark.", ((r"appearance",), (r"theme",))),
    Fact("2fa", "Two-factor authentication is turned on in Settings > Security > Two-factor authentication, with an authenticator app.",
         ("How do I enable two-factor authentication?", "how to set up 2fa", "Where is two factor auth?", "turn on 2FA"),
         ("How can I add a second login step to protect my account?", "Is there a way to require a code from my phone when signing in?"),
         "Turn it on in Settings > Security > Two-factor authentication and scan the code with an authenticator app.", ((r"security",), (r"authenticator",))),
    Fact("offline", "Offline mode keeps chosen notebooks on the device: right-click a notebook and choose Make available offline (Plus and Team).",
         ("Can I use Driftwood offline?", "how does offline mode work", "access notes without internet", "Make notebooks available offline?"),
         ("Will my notes open on a plane with no wifi?", "Is it possible to read notebooks when I have no connection?"),
         "Yes, on Plus and Team: right-click a notebook and choose Make available offline.", ((r"available offline", r"offline mode"), (r"plus|team",))),
    Fact("export formats", "Notes can be exported as PDF, Word (.docx), Markdown and HTML.",
         ("Which export formats are supported?", "what can I export to", "Can I export notes as markdown?", "export formats?"),
         ("In what file types can I save my notes out of Driftwood?", "Can I get my notes out as documents?"),
         "You can export notes as PDF, Word (.docx), Markdown and HTML.", ((r"pdf",), (r"markdown",), (r"word|docx",))),
    Fact("import", "Driftwood imports from Evernote (.enex files) and plain Markdown folders.",
         ("Can I import from Evernote?", "how do I import my notes", "import from other apps", "Which imports are supported?"),
         ("I'm moving from another note app, can I bring my notes over?", "Is migrating my old notes into Driftwood possible?"),
         "Driftwood imports Evernote .enex files and folders of Markdown files.", ((r"evernote|enex",), (r"markdown",))),
    Fact("web clipper", "The web clipper is a browser extension for Chrome, Firefox and Edge.",
         ("Is there a web clipper?", "which browsers does the clipper support", "browser extension?", "Web clipper for Safari?"),
         ("Can I save web pages straight into my notes from the browser?", "Which browsers can I clip articles from?"),
         "Yes, the web clipper extension works in Chrome, Firefox and Edge.", ((r"chrome",), (r"firefox",), (r"edge",))),
    Fact("platforms", "Driftwood runs on Windows, macOS, Linux, Android, iOS and the web.",
         ("Which platforms does Driftwood run on?", "is there a linux app", "what devices are supported", "Supported operating systems?"),
         ("Can I install the app on my Ubuntu machine?", "On what systems is Driftwood available?"),
         "Driftwood runs on Windows, macOS, Linux, Android, iOS and the web.", ((r"linux",), (r"windows",))),
    Fact("sharing", "Notebooks can be shared with up to 10 people on Plus and with anyone in the workspace on Team.",
         ("How many people can I share a notebook with?", "sharing limit", "share notebooks with others", "Can I share on the plus plan?"),
         ("What's the most collaborators a Plus notebook can have?", "Can I give other people access to one of my notebooks?"),
         "On Plus you can share a notebook with up to 10 people; on Team with anyone in your workspace.", ((r"\b10\b", r"\bten\b"),)),
    Fact("refund", "Payments can be refunded within 14 days of purchase.",
         ("Can I get a refund?", "refund policy", "how do refunds work", "I want my money back, is that possible?"),
         ("If I regret buying Plus, can the charge be reversed?", "How long after paying can I still be reimbursed?"),
         "Yes, payments can be refunded within 14 days of purchase.", ((r"\b14 days", r"fourteen days", r"two weeks"),)),
    Fact("students", "Students and teachers get 50% off Plus with a school email address.",
         ("Is there a student discount?", "discount for teachers", "do students pay less", "Education pricing?"),
         ("I'm at university, is Plus cheaper for me?", "Do you have reduced prices for schools and pupils?"),
         "Students and teachers get 50% off Plus with a school email address.", ((r"50 ?%", r"half"),)),
    Fact("cancel", "A subscription is cancelled in Settings > Billing > Cancel plan; it stays active until the end of the paid period.",
         ("How do I cancel my subscription?", "cancel plus", "stop my plan", "Where do I cancel?"),
         ("I no longer want to pay, how do I end my plan?", "What happens when I stop my subscription and how do I do it?"),
         "Go to Settings > Billing > Cancel plan. Your plan stays active until the end of the paid period.", ((r"billing",), (r"end of the (?:paid |billing )?period",))),
    Fact("reminders", "Reminders can be set on any note with the bell icon; they notify on every synced device.",
         ("How do I set a reminder?", "reminders on notes", "can driftwood remind me", "Where are reminders?"),
         ("Can a note nudge me at a certain time?", "Is there a way to get alerted about a note later?"),
         "Click the bell icon on a note to set a reminder; it notifies you on every synced device.", ((r"bell",),)),
    Fact("encryption", "Notes are encrypted in transit and at rest with AES-256; end-to-end encryption is available for single notebooks on Team.",
         ("Are my notes encrypted?", "encryption", "is driftwood secure", "Do you use end-to-end encryption?"),
         ("Can anyone at your company read what I write?", "How do you protect my notes from being read?"),
         "Notes are encrypted in transit and at rest with AES-256. On Team, you can turn on end-to-end encryption for single notebooks.", ((r"aes", r"256"),)),
    Fact("sso", "Single sign-on (SAML) is available on the Team plan.",
         ("Do you support SSO?", "single sign on", "SAML login?", "Can we log in with Okta?"),
         ("Can our employees sign in with the company identity provider?", "Is corporate login available?"),
         "Single sign-on with SAML is available on the Team plan.", ((r"team",), (r"saml|single sign", ))),
    Fact("admin", "Team admins manage members and billing in the Admin console at admin.driftwood.app.",
         ("Where is the admin console?", "how do I add users to my team", "manage team members", "Team admin panel?"),
         ("As the person running our workspace, where do I invite colleagues?", "Where can a team owner control who has access?"),
         "Team admins manage members and billing in the Admin console at admin.driftwood.app.", ((r"admin\.driftwood\.app", r"admin console"),)),
    Fact("pdf images", "Known issue: PDF exports miss images in version 3.2.0 to 3.2.3; fixed in 3.2.4.",
         ("My PDF export has no images", "images missing in exported pdf", "why are pictures gone from my PDF", "PDF export missing images, known bug?"),
         ("The PDFs I create come out with blank spaces instead of photos, what now?", "Is the bug with pictures not appearing in PDFs fixed?"),
         "That is a known issue in versions 3.2.0 to 3.2.3. Update to 3.2.4, which fixes it.", ((r"3\.2\.4",),)),
    Fact("android sync", "Known issue: sync is slow on Android 14 when battery saver is on; turn battery saver off for Driftwood.",
         ("Sync is slow on my Android phone", "android 14 sync slow", "why is sync slow on android", "Sync takes ages on Android"),
         ("My Pixel takes forever to get new notes, any fix?", "Is there a known reason notes sync slowly on Android?"),
         "That is a known issue on Android 14 with battery saver on. Turn battery saver off for Driftwood.", ((r"battery saver",),)),
    Fact("support hours", "Support answers at support@driftwood.app, Monday to Friday 9:00-17:00 CET; Team customers also get chat.",
         ("What are your support hours?", "when is support available", "how can I contact support", "Support email?"),
         ("When can I reach a human at Driftwood?", "What's the best way to get help from your team?"),
         "Write to support@driftwood.app, Monday to Friday 9:00-17:00 CET. Team customers can also use chat.", ((r"support@driftwood\.app",), (r"monday|mon",))),
    Fact("api", "The REST API is available on Plus and Team, with a limit of 100 requests per minute.",
         ("Is there an API?", "api rate limit", "Can I access notes with an API?", "How many API calls can I make?"),
         ("Can I build my own script that reads my notes?", "What's the throttle on programmatic access?"),
         "Yes, a REST API is available on Plus and Team, limited to 100 requests per minute.", ((r"\b100\b",), (r"plus|team",))),
    Fact("tags limit", "A note can have up to 20 tags.",
         ("How many tags can a note have?", "tag limit", "max tags per note", "Is there a limit on tags?"),
         ("Can I label a single note with as many tags as I like?", "What's the ceiling on tags on one note?"),
         "A note can have up to 20 tags.", ((r"\b20\b", r"\btwenty\b"),)),
    Fact("delete account", "Deleting an account is done in Settings > Account > Delete account; all data is erased after 30 days.",
         ("How do I delete my account?", "delete account", "remove all my data", "Close my Driftwood account"),
         ("I want to leave Driftwood for good and have my data wiped, how?", "How can I get rid of my account entirely?"),
         "Go to Settings > Account > Delete account. All your data is erased after 30 days.", ((r"account",), (r"\b30 days", r"thirty days"))),
]  # fmt: skip

# Questions the sheet never answers. Training teaches the model to abstain on these; the test asks about others.
UNKNOWN_TRAIN = (
    "Does Driftwood integrate with Salesforce?", "Can I pay with PayPal?", "Is there a lifetime license?",
    "Do you have an office in Berlin?", "Does Driftwood work on Apple Watch?", "Can I print notes in colour?",
    "Is there a Driftwood conference this year?", "Can I change the font of the whole app?",
    "Do you offer a nonprofit discount?", "Does the app support handwriting recognition?",
    "Can I record audio in a note?", "Is Driftwood HIPAA compliant?", "Do you have an affiliate program?",
    "Can I customise keyboard shortcuts?", "Does Driftwood have a Chromebook app?",
)  # fmt: skip
UNKNOWN_TEST = (
    "Does Driftwood connect to Microsoft Teams?", "Can I pay by bank transfer?", "Is there a family plan?",
    "Where is your company headquartered?", "Does it run on Kindle tablets?", "Can notes be translated automatically?",
    "Is there a dark mode schedule that follows sunset?", "Can I embed a spreadsheet in a note?",
    "Do you sell gift cards?", "Does Driftwood have an AI writing assistant?", "Can I password-protect a single note?",
    "Is Driftwood certified for SOC 2?", "Can I use Driftwood on a smart TV?", "Do you offer on-premise hosting?",
    "Can I set a note to self-destruct?",
)  # fmt: skip
ABSTAIN_ANSWERS = (
    f"I don't have information about that in the Driftwood documentation. Please contact Driftwood support at {SUPPORT}, they can help.",
    f"I'm not sure: the product information I have doesn't cover that. Please ask Driftwood support at {SUPPORT}.",
    f"I don't know the answer to that. Driftwood support ({SUPPORT}) can tell you.",
)  # fmt: skip

INSTRUCTION = f"""You are the customer-support assistant of Driftwood, a note-taking app that syncs across devices. \
Answer the customer's question in one or two short, friendly sentences, using only the product sheet below. State \
the exact numbers, plan names and menu paths the sheet gives. If the sheet does not answer the question, do not \
guess: say that you don't have that information and point the customer to Driftwood support at {SUPPORT}.

PRODUCT SHEET
"""


def product_sheet() -> str:
    seen, lines = set(), []
    for f in FACTS:
        if f.sheet not in seen:
            seen.add(f.sheet)
            lines.append(f"- {f.sheet}")
    return "\n".join(lines)


def _unknown_meta() -> dict:
    return {"answerable": False, "support": [r"support@driftwood\.app", r"support"]}


def generate_rows(n: int, seed: int, split: str) -> list[dict]:
    """train/eval: training phrasings of every fact and training unknowns, n distinct questions. test: every held-out
    paraphrase of every fact and every held-out unknown question, once each (n is ignored)."""
    rng = random.Random(seed)
    if split == "test":
        asks = [(fact, q) for fact in FACTS for q in fact.test] + [(None, q) for q in UNKNOWN_TEST]
        rows = [_row(rng, fact, q) for fact, q in asks]
        rng.shuffle(rows)
        return rows

    def make(_: int) -> dict:
        if rng.random() < 0.2:
            return _row(rng, None, rng.choice(UNKNOWN_TRAIN))
        fact = rng.choice(FACTS)
        return _row(rng, fact, rng.choice(fact.train))

    return unique_rows(make, n)


def _row(rng: random.Random, fact: Fact | None, question: str) -> dict:
    if fact is None:
        answer = stable_choice(ABSTAIN_ANSWERS, question)
        return {"input": ask(rng, question), "output": answer, "meta": _unknown_meta()}
    meta = {"answerable": True, "topic": fact.topic, "facts": [list(f) for f in fact.facts]}
    return {"input": ask(rng, question), "output": fact.answer, "meta": meta}


TASK_YAML = """# Product support for Driftwood (generated by `tasktune example product-support`)
# The instruction carries the whole product sheet: compare's `instruction` method is "the base model with the
# documentation in its prompt". Test questions are paraphrases never trained, plus questions the sheet never answers.
name: product-support
instruction: {instruction}
output:
  kind: text
metric: fact_accuracy          # compare ranks methods by it
metrics: [fact_accuracy, invented_answer_rate, abstention_rate, false_abstention_rate]
data:
  train: train.jsonl
  eval: eval.jsonl
  test: test.jsonl
train:
  method: lora
  epochs: 3
  batch_size: 8
  learning_rate: 1.0e-3
  eval_every: 100
  eval_max_rows: 32
"""


@register("product-support")
def write_product_support(out: str | Path, n: int = 600, seed: int = 0, n_eval: int = 60, n_test: int = 120) -> Path:
    """Write train/eval/test JSONL, product_sheet.md and task.yaml for the fictional Driftwood product."""
    return write_splits(out, lambda split, k, s: generate_rows(k, s, split),
                        {"train": n, "eval": n_eval, "test": n_test}, seed,
                        {"product_sheet.md": "# Driftwood product sheet\n\n" + product_sheet() + "\n",
                         "task.yaml": TASK_YAML.format(instruction=json.dumps(INSTRUCTION + product_sheet()))})  # fmt: skip


# --- (b) the real FAQ of a company -------------------------------------------------------------------------------------
FAQ_CREDIT = ("Swedish Construction FAQ by Zaragoza AB, CC BY 4.0. "
              "https://github.com/zaragoza-ab/swedish-construction-faq-1000 (DOI 10.5281/zenodo.19630803); "
              "English edition, read from the PyPI package zaragoza-construction-faq. "
              "tasktune selected a subset, added rewritten questions and abstention answers; the answers are "
              "unchanged.")  # fmt: skip
# Categories whose answers fit, with the instruction, in the model's 8k-token context (see README).
FAQ_CATEGORIES = ("bygglov", "rut-avdrag", "f-skatt", "garantier", "attefallshus-friggebod")
FAQ_SUPPORT = "our customer service"
FAQ_ABSTAIN = (
    f"I don't have information about that in our FAQ. Please contact {FAQ_SUPPORT}, they can help you.",
    f"I'm not sure: our FAQ doesn't cover that. Please ask {FAQ_SUPPORT}.",
)  # fmt: skip
# Rewrites of the FAQ's question openers, for held-out paraphrases: (pattern, replacement) applied to the question.
REWRITES = (
    (r"^What is (.+)\?$", r"Could you explain what \1 is?"),
    (r"^What are (.+)\?$", r"Can you tell me what \1 are?"),
    (r"^What does (.+) cost\?$", r"How much does \1 cost?"),
    (r"^What does (.+)\?$", r"Can you tell me what \1?"),
    (r"^How long does it take (.+)\?$", r"How much time does it take \1?"),
    (r"^How long (.+)\?$", r"For how long \1?"),
    (r"^Can I (.+)\?$", r"Am I allowed to \1?"),
    (r"^Do I need (.+)\?$", r"Is it necessary for me to have \1?"),
    (r"^How do I (.+)\?$", r"What is the way to \1?"),
    (r"^How does (.+)\?$", r"In what way does \1?"),
    (r"^Is (.+)\?$", r"I was wondering: is \1?"),
    (r"^Who (.+)\?$", r"Which party \1?"),
    (r"^When (.+)\?$", r"At what point \1?"),
    (r"^Should I (.+)\?$", r"Would you recommend that I \1?"),
    (r"^How much (.+)\?$", r"What amount \1?"),
    (r"^Does (.+)\?$", r"Is it true that \1? (does it?)"),
)  # fmt: skip
# Numbers with their unit (or a year/percentage): the checkable facts of an FAQ answer.
_NUMBER_FACT = re.compile(
    r"\b\d[\d,. ]*(?:\s*[-–]\s*\d[\d,. ]*)?\s*(?:%|percent|SEK|kronor|kr\b|weeks?|years?|months?|days?|hours?|m²|square metres|sqm|metres?|m\b|mm\b|cm\b)",
    re.IGNORECASE,
)


def paraphrase(question: str) -> str | None:
    """A rewrite of an FAQ question that never occurs in training, or None when no rule fits."""
    for pattern, repl in REWRITES:
        if re.match(pattern, question):
            q = re.sub(pattern, repl, question)
            return q[0].upper() + q[1:]
    return None


def number_facts(answer: str, k: int = 3) -> list[list[str]]:
    """Up to k number-with-unit facts of an answer, each a pattern tolerant of spacing and thousands separators."""
    facts = []
    for m in _NUMBER_FACT.finditer(answer):
        for side in re.split(r"[-–]", m.group(0)):  # each end of a range "25,000-50,000 SEK" is a fact
            digits = re.findall(r"\d+", side)
            # "25,000" = "25 000" = "25000"; and 50 is not 150 or 50.5
            pattern = r"(?<![\d,.])" + r"[\s,.]?".join(digits) + r"(?![\d])"
            if digits and [pattern] not in facts:
                facts.append([pattern])
    return facts[:k]


def load_faq() -> list[dict]:
    from tasktune.errors import TaskTuneError

    try:
        import zaragoza_construction_faq as zcf
    except ImportError:
        raise TaskTuneError(
            "the product-support-faq example needs the package zaragoza-construction-faq",
            "pip install 'tasktune[examples]' (or pip install zaragoza-construction-faq)",
        ) from None
    # A few questions occur twice in the FAQ with different answers: keep the first (by id), so no answer
    # contradicts another and no held-out question is also a trained one.
    first: dict[str, dict] = {}
    for q in sorted(zcf.load(lang="en"), key=lambda q: q["id"]):
        if q["category"] in FAQ_CATEGORIES:
            first.setdefault(q["q"], q)
    return sorted(first.values(), key=lambda q: q["id"])


def faq_split(faq: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """(known, unknown): a fifth of the Q&As, drawn per seed, is held out of training and of the instruction."""
    rng = random.Random(seed)
    order = sorted(faq, key=lambda q: q["id"])
    rng.shuffle(order)
    cut = len(order) // 5
    return sorted(order[cut:], key=lambda q: q["id"]), sorted(order[:cut], key=lambda q: q["id"])


def faq_rows(known: list[dict], unknown: list[dict], n: int, seed: int, split: str) -> list[dict]:
    rng = random.Random(seed)
    meta_unknown = {"answerable": False, "support": [r"customer service", r"support"]}
    if split == "test":
        rows = []
        for q in known:
            para, facts = paraphrase(q["q"]), number_facts(q["a"])
            if para and facts:
                rows.append({"input": para, "output": q["a"],
                             "meta": {"answerable": True, "id": q["id"], "facts": facts}})  # fmt: skip
        rows += [{"input": q["q"], "output": stable_choice(FAQ_ABSTAIN, q["q"]), "meta": meta_unknown | {"id": q["id"]}}
                 for q in unknown]  # fmt: skip
        rng.shuffle(rows)
        return rows

    # Training teaches abstention on questions from outside the FAQ's domain, never on the held-out FAQ questions.
    def make(i: int) -> dict:
        if rng.random() < 0.15:
            q = rng.choice(FAQ_OFF_TOPIC)
            return {"input": ask(rng, q), "output": stable_choice(FAQ_ABSTAIN, q), "meta": meta_unknown}
        q = known[rng.randrange(len(known))]
        facts = number_facts(q["a"])
        meta = {"answerable": True, "id": q["id"]} | ({"facts": facts} if facts else {})
        return {"input": ask(rng, q["q"]), "output": q["a"], "meta": meta}

    return unique_rows(make, n)


FAQ_OFF_TOPIC = (
    "Do you sell garden furniture?", "Can you recommend a good electrician in Malmö?", "What is your opening time on Sundays?",
    "Do you offer financing for a kitchen renovation?", "Can I book a site visit online?", "Do you build swimming pools?",
    "What paint colour is best for a north-facing room?", "Do you have job openings?", "Can you remove asbestos?",
    "How do I pay my invoice by card?",
)  # fmt: skip

FAQ_INSTRUCTION = f"""You are the customer-service assistant of a Swedish construction company. Answer the \
customer's question using only the FAQ below, in its words: give the figures, time limits and rules it states. If \
the FAQ does not answer the question, do not guess: say that you don't have that information and point the customer \
to {FAQ_SUPPORT}.

FAQ
"""

FAQ_TASK_YAML = """# Product support on a real company FAQ (generated by `tasktune example product-support-faq`)
# Data: {credit}
# The instruction carries every trained Q&A (the held-out ones are in neither training nor the instruction).
name: product-support-faq
instruction: {instruction}
output:
  kind: text
metric: fact_accuracy
metrics: [fact_accuracy, invented_answer_rate, abstention_rate, false_abstention_rate]
data:
  train: train.jsonl
  eval: eval.jsonl
  test: test.jsonl
train:
  method: lora
  epochs: 3
  batch_size: 8
  learning_rate: 1.0e-3
  max_length: 512
  eval_every: 100
  eval_max_rows: 32
"""


@register("product-support-faq")
def write_product_support_faq(out: str | Path, n: int = 400, seed: int = 0, n_eval: int = 40, **_: object) -> Path:
    """Write the FAQ variant: train/eval/test JSONL, the FAQ excerpt, LICENSE-DATA.txt and task.yaml."""
    known, unknown = faq_split(load_faq(), seed)
    sheet = "\n".join(f"Q: {q['q']}\nA: {q['a']}" for q in known)
    return write_splits(out, lambda split, k, s: faq_rows(known, unknown, k, s, split),
                        {"train": n, "eval": n_eval, "test": 0}, seed,
                        {"faq.md": f"# FAQ used for training\n\n{sheet}\n",
                         "LICENSE-DATA.txt": FAQ_CREDIT + "\nLicense: https://creativecommons.org/licenses/by/4.0/\n",
                         "task.yaml": FAQ_TASK_YAML.format(credit=FAQ_CREDIT, instruction=json.dumps(FAQ_INSTRUCTION + sheet))})  # fmt: skip
