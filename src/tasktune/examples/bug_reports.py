# ruff: noqa: E501  (phrase tables read best one entry per line)
"""Bug reports → JSON: the concept's scenario, as a deterministic generator of realistic reports and exact labels.

Every report is composed from facts (which issue, platform, app version, error text, how often, since when, a
workaround) that the label is computed from by the rules the instruction states, so labels follow the schema's
rules exactly. The surface differs per report: eight writing styles, several phrasings of every fact, typos, pasted
log lines and stack traces, irrelevant chatter, missing details (→ null).

The test split is written in two styles that never occur in training (an e-mail with a signature, and an
issue-tracker form) and uses, for each fact, phrasings held out from training half of the time, so the score
measures generalisation rather than memorised templates.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tasktune.examples.kit import pick, register, typos, write_splits

PRODUCT = "Driftwood"
COMPONENTS = ["login", "sync", "editor", "export", "search", "notifications", "billing", "settings"]
PLATFORMS = ["windows", "macos", "linux", "android", "ios", "web"]
SEVERITY_BY_KIND = {"data_loss": "critical", "security": "critical", "startup": "critical", "crash": "high",
                    "blocked": "high", "wrong": "medium", "slow": "medium", "cosmetic": "low"}  # fmt: skip
TRAIN_STYLES = ["terse", "polite", "angry", "rambling", "bullets", "runon"]
TEST_STYLES = ["email", "tracker"]


@dataclass(frozen=True)
class Issue:
    component: str
    kind: str
    title: str
    train: tuple[str, ...]  # phrasings of the symptom seen in training
    test: tuple[str, ...]  # phrasings held out for the test split


ISSUES = [
    Issue("login", "crash", "App crashes when signing in",
          ("the app crashes as soon as I hit the sign in button", "it crashes right after I enter my password and press login",
           "login = instant crash"), ("the moment I try to log in the whole thing closes itself",)),
    Issue("login", "blocked", "Password reset email never arrives",
          ("I requested a password reset three times and never got the email", "the reset password mail doesn't come",
           "no password reset email, checked spam too"), ("forgot my password, clicked reset, nothing ever lands in my inbox",)),
    Issue("login", "security", "Signed in as another user",
          ("after logging in I saw someone else's notes and name", "I got into another person's account after signing in",
           "login shows a different user's workspace"), ("signed in and the documents on screen belong to a stranger",)),
    Issue("login", "cosmetic", "Sign-in button misaligned",
          ("the sign in button is cut off on the login page", "the login button overlaps the password field",
           "the login screen layout is off, the button is half hidden"), ("on the sign-in page the button sits crooked over the text box",)),
    Issue("sync", "data_loss", "Notes deleted after sync",
          ("after syncing, a bunch of my notes just disappeared", "sync wiped my notes",
           "I lost all notes from last week after a sync"), ("synced my laptop and now half my notes are gone for good",)),
    Issue("sync", "blocked", "Sync never finishes",
          ("sync never finishes, it just says Syncing... forever", "it is stuck on the syncing spinner",
           "the sync progress bar hangs and never completes"), ("it sits there syncing for hours and never gets anywhere",)),
    Issue("sync", "wrong", "Edits from other devices missing after sync",
          ("changes I make on my phone don't show up on my laptop after sync", "sync says done but edits from the other device are missing",
           "my edits on one device never appear on the other"), ("I edit on the tablet and the desktop still shows the old text after syncing",)),
    Issue("sync", "slow", "Sync is very slow",
          ("syncing takes like 5 minutes now", "sync is extremely slow, minutes for a few notes",
           "a simple sync is super slow"), ("sync crawls, I can make coffee while it runs",)),
    Issue("editor", "crash", "App crashes when pasting an image",
          ("pasting an image into a note crashes the app", "ctrl+v with a picture = crash",
           "the editor crashes when I paste a screenshot"), ("dropping a copied photo into a note makes the app quit on me",)),
    Issue("editor", "data_loss", "Typed text lost when the note closes",
          ("the editor closed and everything I typed was gone", "I lost an hour of writing, autosave didn't save anything",
           "my text vanished when the note closed, nothing was saved"), ("closed the note and every word I'd typed since lunch was gone",)),
    Issue("editor", "wrong", "Undo removes more than the last change",
          ("undo deletes way more than my last edit", "ctrl+z wipes the whole paragraph instead of one word",
           "undo goes back too far"), ("pressing undo takes out several edits, not just the last one",)),
    Issue("editor", "cosmetic", "Text overlaps in dark mode",
          ("in dark mode the text overlaps the toolbar", "the dark theme makes the lines overlap each other",
           "there is overlapping text when dark mode is on"), ("switch to the dark theme and the letters pile on top of each other",)),
    Issue("export", "crash", "App crashes when exporting to PDF",
          ("exporting a note to PDF crashes the app", "crash on export to pdf",
           "exporting as PDF crashes the app"), ("choosing PDF in the export menu kills the app",)),
    Issue("export", "wrong", "Exported PDF is missing images",
          ("the exported PDF has no images in it", "images are missing from PDF exports",
           "the pdf export drops all the pictures"), ("my PDFs come out with blank spaces where the pictures should be",)),
    Issue("export", "blocked", "Export to Word does nothing",
          ("clicking export to Word does nothing at all", "the Word export button doesn't respond",
           "export as .docx never produces a file"), ("I pick Word as the export format and nothing happens, no file",)),
    Issue("export", "slow", "Exporting large notebooks is very slow",
          ("exporting a big notebook takes forever", "export is really slow for large notebooks",
           "an export of 200 notes takes 20+ minutes"), ("exporting my larger notebooks drags on and on",)),
    Issue("search", "wrong", "Search misses matching notes",
          ("search doesn't find notes even though the word is in them", "searching for a word I know is there returns nothing",
           "search results are missing obvious matches"), ("I look up a word that's definitely in a note and search comes back empty",)),
    Issue("search", "crash", "App crashes when searching for special characters",
          ("searching for something with a # or & crashes the app", "search with special characters = crash",
           "typing a symbol like % in search crashes it"), ("put an ampersand in the search box and the app falls over",)),
    Issue("search", "slow", "Search is slow",
          ("search takes 10 seconds to show results", "search is laggy and slow",
           "results take forever to appear when searching"), ("searching makes me wait ages for results",)),
    Issue("notifications", "wrong", "Reminders arrive at the wrong time",
          ("reminders go off an hour late", "my reminders fire at the wrong time",
           "reminder notifications come at random times, not when I set them"), ("the reminder I set for 9 pinged me at 10",)),
    Issue("notifications", "blocked", "No notifications arrive",
          ("I don't get any notifications at all", "push notifications stopped completely",
           "notifications never show up even though they are enabled"), ("not a single alert comes through anymore, and the settings are on",)),
    Issue("notifications", "cosmetic", "Notification text is cut off",
          ("notification text is truncated", "the notification preview cuts off mid-word",
           "only half the reminder text shows in the notification"), ("the alerts chop the message off after a few words",)),
    Issue("billing", "wrong", "Charged twice for the subscription",
          ("I was charged twice for my subscription this month", "there is a double charge on my card for the plan",
           "billing took the payment two times"), ("my bank shows two identical charges for the same month",)),
    Issue("billing", "blocked", "Cannot upgrade to the Pro plan",
          ("the upgrade to Pro button gives an error and I can't upgrade", "can't upgrade my plan, the payment page fails",
           "upgrading to pro doesn't work"), ("I'm trying to pay for Pro and it won't let me",)),
    Issue("billing", "security", "Full card number shown on the billing page",
          ("my full card number is shown on the billing page", "the billing page displays the whole credit card number",
           "anyone can see my complete card number in billing settings"), ("all sixteen digits of my card sit right there on the billing screen",)),
    Issue("settings", "startup", "App does not start after changing the language",
          ("after I changed the language the app won't open anymore", "changed the language setting, now the app doesn't start",
           "the app won't launch since I switched the language"), ("switched the interface language and now it never gets past launch",)),
    Issue("settings", "wrong", "Settings reset after restart",
          ("all my settings reset when I restart", "preferences don't stick after closing the app",
           "settings go back to default after relaunch"), ("whatever I change in preferences is undone next time I open it",)),
    Issue("settings", "cosmetic", "Toggle labels swapped in settings",
          ("the on/off labels on the toggles in settings are swapped", "settings switches say off when they are on",
           "the toggle labels are backwards in settings"), ("in settings the switches read the opposite of what they do",)),
]  # fmt: skip

# More training phrasings per issue: real reports say the same thing in many ways, and seeing several teaches the
# concept rather than the string (the held-out test phrasings above stay unseen).
_MORE_TRAIN = {
    "App crashes when signing in": ("the app closes by itself when I log in", "signing in makes the app crash"),
    "Password reset email never arrives": (
        "I never receive the password reset link",
        "the forgot-password email is not coming through",
    ),
    "Signed in as another user": (
        "I logged in and got a stranger's account",
        "I can see another customer's notes after login",
    ),
    "Sign-in button misaligned": ("the login button is drawn in the wrong place", "the sign in button is misaligned"),
    "Notes deleted after sync": ("my notes were deleted when it synced", "sync removed several notebooks completely"),
    "Sync never finishes": ("sync keeps spinning and never completes", "syncing gets stuck and never ends"),
    "Edits from other devices missing after sync": (
        "my phone and laptop show different versions after syncing",
        "edits made on the tablet are not synced to my PC",
    ),
    "Sync is very slow": ("syncing is painfully slow", "it takes ages to sync a handful of notes"),
    "App crashes when pasting an image": (
        "the app crashes if I paste a photo into a note",
        "inserting a picture from the clipboard crashes the editor",
    ),
    "Typed text lost when the note closes": (
        "everything I wrote disappeared when the note closed",
        "my unsaved writing was wiped when the editor shut",
    ),
    "Undo removes more than the last change": (
        "undo reverts several changes instead of one",
        "pressing undo erases much more than I typed last",
    ),
    "Text overlaps in dark mode": (
        "the text is drawn on top of other text in dark mode",
        "dark mode makes the words overlap",
    ),
    "App crashes when exporting to PDF": (
        "the app crashes when I save a note as PDF",
        "pdf export makes the app crash",
    ),
    "Exported PDF is missing images": (
        "pictures don't appear in the exported pdf",
        "the PDF export leaves out the images",
    ),
    "Export to Word does nothing": ("export to Word has no effect at all", "nothing happens when I export to docx"),
    "Exporting large notebooks is very slow": (
        "big notebooks take ages to export",
        "exporting a large notebook is painfully slow",
    ),
    "Search misses matching notes": (
        "search can't find notes that contain the word",
        "search skips notes that clearly match",
    ),
    "App crashes when searching for special characters": (
        "the app crashes if my search has symbols in it",
        "searching for a hashtag crashes everything",
    ),
    "Search is slow": ("search results load very slowly", "searching takes ages"),
    "Reminders arrive at the wrong time": (
        "reminders show up late",
        "the reminder notification arrives at the wrong hour",
    ),
    "No notifications arrive": (
        "I receive no notifications anymore",
        "no reminders or push messages come through at all",
    ),
    "Notification text is cut off": (
        "the notification only shows part of the text",
        "reminder text is cut short in the notification",
    ),
    "Charged twice for the subscription": (
        "my card was billed twice for one subscription",
        "I see two payments for the same plan",
    ),
    "Cannot upgrade to the Pro plan": (
        "upgrading to the pro plan fails",
        "I can't buy the Pro subscription, it errors out",
    ),
    "Full card number shown on the billing page": (
        "the billing page shows my entire card number",
        "my complete credit card number is visible in billing",
    ),
    "App does not start after changing the language": (
        "since changing the language the app doesn't open",
        "the app fails to launch after I picked another language",
    ),
    "Settings reset after restart": (
        "my preferences are lost when I restart the app",
        "settings don't save between sessions",
    ),
    "Toggle labels swapped in settings": (
        "the switches in settings show the wrong labels",
        "on and off are mixed up on the settings toggles",
    ),
}
ISSUES = [Issue(i.component, i.kind, i.title, i.train + _MORE_TRAIN[i.title], i.test) for i in ISSUES]

PLATFORM_PHRASES = {
    "windows": (("on Windows 11", "on my Windows 10 laptop", "win11 desktop", "on a Windows PC"), ("Surface laptop running Windows",)),
    "macos": (("on my Mac", "on macOS Sonoma", "MacBook Pro with macOS 14", "on a mac mini"), ("macOS Ventura on an iMac",)),
    "linux": (("on Ubuntu 22.04", "Linux (Fedora 39)", "on arch linux", "on linux mint"), ("Debian 12 desktop",)),
    "android": (("on Android 14", "on my Pixel 7", "Samsung Galaxy S23 (android)", "android phone"), ("OnePlus phone with Android 13",)),
    "ios": (("on my iPhone 15", "iOS 17.2", "on an iPad Air", "iphone 12"), ("iPhone SE on the latest iOS",)),
    "web": (("in the web app (Chrome)", "web version in Firefox", "browser version, Edge", "on the website"), ("web client in Safari",)),
}  # fmt: skip
VERSION_FORMS = (("v{M}.{m}.{p}", "version {M}.{m}.{p}", "app version {M}.{m}.{p}", "ver {M}.{m}", "Driftwood {M}.{m}.{p}",
                  "v{M}.{m}", "Driftwood v. {M}.{m}.{p}", "version number {M}.{m}.{p}", "the {M}.{m}.{p} app",
                  "Driftwood {M}.{m}"),
                 ("build {M}.{m}.{p}", "release {M}.{m}"))  # fmt: skip
# The training pools are wide on purpose: ten phrasings of "sometimes" teach a lookup table that an eleventh
# phrasing falls through (a held-out phrasing was missed after training on ten and mostly found after training on
# 27), while a wide pool of unrelated idioms teaches the concept. No training phrase shares the
# distinctive words of a held-out one.
REPRO_PHRASES = {
    "always": (("it happens every time", "100% reproducible", "always happens", "each and every time I try",
                "reproducible every single time", "it never fails to happen", "happens 10/10 times",
                "reliably reproducible", "it does this always", "every single attempt", "without exception",
                "every time, no matter what I do", "I can reproduce it on demand", "it happens all the time",
                "guaranteed to happen", "it happens 100% of the time", "constantly", "5 out of 5 tries",
                "every time I open it", "each time, like clockwork", "it's reproducible at will",
                "whenever I try, it happens"),
               ("consistently, without fail",)),
    "sometimes": (("it happens sometimes", "it's intermittent", "maybe 1 in 3 tries", "every now and then",
                   "happens occasionally", "only some of the time", "not every time", "randomly, maybe twice a day",
                   "on and off", "once in a while", "sporadically", "it comes and goes", "it's flaky",
                   "about half the time", "now and again", "some days it's fine, other days not",
                   "every few tries", "seems random when it happens", "not always, but often", "every so often",
                   "a few times a week", "from time to time", "it's a coin toss whether it works",
                   "two or three times out of ten", "it's unpredictable", "here and there"),
                  ("hit or miss",)),
    "once": (("it only happened once so far", "I saw it one time", "happened once yesterday",
              "it just happened one time", "only once, I can't reproduce it", "it happened a single time",
              "first time I've seen it", "it happened just the one time", "haven't seen it again since",
              "it was a single occurrence", "happened this morning and not since", "one time only",
              "just once, last night", "it hasn't happened again", "I've only had it happen once",
              "it occurred once during a meeting", "a single time, couldn't repeat it",
              "saw it once and never again", "it happened on one occasion"),
             ("a one-off so far",)),
}  # fmt: skip
REGRESSION_PHRASES = {
    True: (("this started after the last update", "it worked fine in the previous version", "it used to work before updating", "it broke after upgrading", "it was working last week before the upgrade", "after the update this started", "the previous release didn't have this problem", "it stopped working after I updated", "the new update broke it", "no problems before I installed the update", "it was perfect on the older version", "ever since updating it does this"), ("was fine until the latest release",)),
    False: (("it has never worked for me", "it's been like this since I installed it", "it never worked on this device", "it was like this from the start", "it didn't work the first time I tried either", "it has never worked properly", "same problem since I first installed it", "it hasn't worked since the day I signed up", "it was already broken on my first try", "it has not worked on this account at all"), ("it's been broken from day one",)),
}  # fmt: skip
# Workarounds stay a narrow pool: 22 phrasings ("if I disable dark mode it works", "it works if I go through the
# browser") taught the model that any clause about what still works is a workaround, and severity fell from 84% to
# 80-81% in two runs (tuned reports called "medium" with no workaround in them), while the held-out workaround
# scored no better (28/47 with 8 phrasings, 26/41 with 22).
WORKAROUNDS = (("restarting the app makes it go away for a while", "workaround: I use the web version for now", "I can get around it by logging out and back in", "a reinstall fixes it temporarily", "as a workaround I restart my phone", "I work around it by copying the text first", "switching to the desktop app gets me through", "clearing the cache helps temporarily"),
               ("for now I just use my phone instead",))  # fmt: skip
ERRORS = {
    "login": ("AuthError: invalid session token", "Error 401: Unauthorized", "Something went wrong (code {n4})"),
    "sync": ("SyncTimeoutError: server did not respond in {n2}s", "ERR_SYNC_CONFLICT {n4}", "Error 502: Bad Gateway"),
    "editor": ("NullPointerException in ImagePasteHandler", "OutOfMemoryError: Java heap space", "EditorError E{n4}"),
    "export": ("PdfRenderException: font '{font}' not found", "ExportError: cannot write file", "IOException: disk full"),
    "search": ("IndexCorruptedError: segment {n2} unreadable", "QuerySyntaxError at position {n2}", "Search unavailable (code {n4})"),
    "notifications": ("FCM token expired", "APNS error 410", "SchedulerError: timezone not set"),
    "billing": ("PaymentDeclined: card_error", "Stripe error: payment_intent_unexpected_state", "Error 500: Internal Server Error"),
    "settings": ("LocaleNotFoundException: '{locale}'", "ConfigParseError: unexpected token at line {n2}", "Preferences file corrupted"),
}  # fmt: skip
ERROR_FORMS = (("it says \"{err}\"", "error: {err}", "I get this message: {err}", "LOG", "TRACE",
                "the screen shows '{err}'", "I keep getting {err}", "message: {err}", "it fails with `{err}`",
                "the app tells me \"{err}\"", "a banner appears with the text \"{err}\"", "got this: {err}"),
               ("a dialog pops up saying '{err}'",))  # fmt: skip
CHATTER = ("btw love the app otherwise", "sorry for my english", "my boss is waiting on this report",
           "I have a presentation tomorrow", "not sure if this is the right place to report this",
           "I already tried turning it off and on", "the weather is terrible here so I'm stuck inside working anyway",
           "I've been a customer for 3 years", "also the new icon is nice", "my colleague has the same laptop and no issue")  # fmt: skip
NAMES = ("Maria Lopez", "Tom", "J. Okafor", "Priya Raman", "Lukas B.", "Chen Wei", "Ana", "Dave Miller")
FONTS = ("Inter", "Roboto", "Noto Sans", "Georgia")
LOCALES = ("pt-BR", "de-CH", "fr-CA", "ja-JP", "es-MX")

INSTRUCTION = f"""You are a triage assistant for {PRODUCT}, a note-taking app with sync across devices. Convert the user's \
bug report below into one JSON object and output nothing else: no prose, no code fences, no comments.

The JSON object has exactly these keys, in this order:
1. "title": a short title in sentence case that says what fails, e.g. "App crashes when exporting to PDF". No \
trailing period, at most ten words, no product name.
2. "component": the part of the app that fails. One of: "login" (signing in, passwords, accounts), "sync" \
(synchronising notes between devices), "editor" (writing and editing notes), "export" (PDF, Word and other \
exports), "search", "notifications" (reminders and push notifications), "billing" (plans, payments, invoices), \
"settings" (preferences, language, themes).
3. "severity": one of "critical", "high", "medium", "low", decided by these rules:
   - "critical": data is lost, a security or privacy problem (seeing another user's data, exposed card numbers), or \
the app does not start at all.
   - "high": the app crashes, or a feature cannot be used at all. If the reporter mentions a workaround that lets \
them continue, use "medium" instead.
   - "medium": a feature gives wrong results or is slow.
   - "low": a cosmetic problem (layout, overlapping or cut-off text, wrong labels) that does not stop anyone.
4. "platform": where the reporter runs the app. One of "windows", "macos", "linux", "android", "ios", "web" \
(any browser), or null if the report does not say. iPhone and iPad mean "ios"; Mac, MacBook and iMac mean "macos".
5. "app_version": the {PRODUCT} version the reporter runs now, normalised to three numbers "MAJOR.MINOR.PATCH" \
without a "v" prefix: "v2.3.1", "version 2.3.1" and "build 2.3.1" all become "2.3.1"; a two-part version "2.3" \
becomes "2.3.0". Operating system versions (Windows 11, iOS 17, Android 14) are not app versions. null if no \
{PRODUCT} version number is given ("the latest version" is null).
6. "error_message": the error text the user saw, copied exactly (same spelling, case and numbers), without \
surrounding quotes, timestamps, log levels, component tags or stack frames. For a pasted log, take the text after \
the log level and component tag of the ERROR line; for a stack trace, take its first line. null if no error text \
is given.
7. "reproducibility": "always" (every time, 100%, consistently), "sometimes" (intermittent, now and then, some \
tries), "once" (happened one time), or null if the report does not say.
8. "regression": true if it used to work and broke after an update, false if it never worked, null if the report \
does not say.

Ignore greetings, signatures, apologies and anything unrelated to the problem. Do not invent details: when the \
report does not state a fact, use null. Keep the report's meaning; do not fix the user's problem.
"""

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Driftwood bug report",
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "component": {"enum": COMPONENTS},
        "severity": {"enum": ["critical", "high", "medium", "low"]},
        "platform": {"enum": [*PLATFORMS, None]},
        "app_version": {"type": ["string", "null"], "pattern": r"^\d+\.\d+\.\d+$"},
        "error_message": {"type": ["string", "null"]},
        "reproducibility": {"enum": ["always", "sometimes", "once", None]},
        "regression": {"type": ["boolean", "null"]},
    },
    "required": ["title", "component", "severity", "platform", "app_version", "error_message", "reproducibility",
                 "regression"],
    "additionalProperties": False,
}  # fmt: skip


def make_record(rng: random.Random, held_out: bool) -> tuple[str, dict]:
    """One report and its label, both from the same sampled facts."""
    issue = rng.choice(ISSUES)
    platform = rng.choice(PLATFORMS) if rng.random() < 0.75 else None
    version = None
    if rng.random() < 0.7:
        major, minor, patch = rng.randint(1, 5), rng.randint(0, 19), rng.randint(0, 9)
        form = pick(rng, *VERSION_FORMS, held_out)
        if "{p}" not in form:
            patch = 0
        version_text = form.format(M=major, m=minor, p=patch)
        version = f"{major}.{minor}.{patch}"
    elif rng.random() < 0.3:
        version_text = "the latest version"  # says nothing about the number: null
    else:
        version_text = None
    error = None
    if rng.random() < 0.45:
        error = rng.choice(ERRORS[issue.component]).format(
            n2=rng.randint(2, 99), n4=rng.randint(1000, 9999), font=rng.choice(FONTS), locale=rng.choice(LOCALES)
        )
    repro = rng.choice(list(REPRO_PHRASES)) if rng.random() < 0.65 else None
    regression = rng.choice([True, False]) if rng.random() < 0.6 else None
    workaround = rng.random() < 0.3
    severity = SEVERITY_BY_KIND[issue.kind]
    if severity == "high" and workaround:
        severity = "medium"
    label = {
        "title": issue.title,
        "component": issue.component,
        "severity": severity,
        "platform": platform,
        "app_version": version,
        "error_message": error,
        "reproducibility": repro,
        "regression": regression,
    }
    facts = {
        "symptom": pick(rng, issue.train, issue.test, held_out),
        "platform": pick(rng, *PLATFORM_PHRASES[platform], held_out) if platform else None,
        "version": version_text,
        "error": error,
        "error_form": pick(rng, *ERROR_FORMS, held_out) if error else None,
        "repro": pick(rng, *REPRO_PHRASES[repro], held_out) if repro else None,
        "regression": pick(rng, *REGRESSION_PHRASES[regression], held_out) if regression is not None else None,
        "workaround": pick(rng, *WORKAROUNDS, held_out) if workaround else None,
        "component": issue.component,
        "chatter": rng.sample(CHATTER, k=rng.choice([0, 0, 1, 2])),
    }
    style = rng.choice(TEST_STYLES if held_out else TRAIN_STYLES)
    return render_report(rng, style, facts), label


def _error_block(rng: random.Random, facts: dict) -> tuple[str, bool]:
    """The error as the user pasted it; returns (text, is_block) where blocks go on their own lines."""
    err, form = facts["error"], facts["error_form"]
    if form == "LOG":
        t = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        lines = [f"{t}:{rng.randint(0, 59):02d} INFO [app] started, {rng.randint(3, 90)} notes loaded",
                 f"{t}:{rng.randint(0, 59):02d} ERROR [{facts['component']}] {err}",
                 f"{t}:{rng.randint(0, 59):02d} INFO [app] shutting down"]  # fmt: skip
        return "here's the log:\n" + "\n".join(lines[rng.randint(0, 1) :]), True
    if form == "TRACE":
        cls = facts["component"].capitalize() + rng.choice(["Service", "Manager", "Controller"])
        frames = [f"    at com.driftwood.{facts['component']}.{cls}.{m}({cls}.java:{rng.randint(20, 900)})"
                  for m in rng.sample(["run", "handle", "render", "apply", "load"], k=3)]  # fmt: skip
        return "stack trace:\n" + err + "\n" + "\n".join(frames), True
    return form.format(err=err), False


def _env_text(f: dict) -> str:
    parts = []
    if f["platform"]:
        parts.append(f["platform"] if f["platform"].startswith(("on ", "in ")) else f"on {f['platform']}")
    if f["version"]:
        parts.append(f"using {f['version']}")
    return " ".join(parts)


def render_report(rng: random.Random, style: str, f: dict) -> str:
    symptom = typos(rng, f["symptom"], 0.06 if rng.random() < 0.4 else 0.0)
    env = _env_text(f)
    details = [d for d in (f["repro"], f["regression"], f["workaround"]) if d]
    err, err_block = _error_block(rng, f) if f["error"] else (None, False)
    chatter = list(f["chatter"])
    s = lambda t: t[0].upper() + t[1:] if t else t  # noqa: E731
    if style == "terse":
        parts = [p.lower() for p in (symptom, env, *details) if p] + ([err] if err and not err_block else [])
        text = ". ".join(parts) + ("\n" + err if err_block else "")  # the error text keeps its exact case
    elif style == "polite":
        parts = [rng.choice(["Hello,", "Hi team,", "Good morning,"]), f"I'd like to report a problem: {symptom}."]
        parts += [s(env) + "." if env else "", *(s(d) + "." for d in details), *(s(c) + "." for c in chatter)]
        if err and not err_block:
            parts.append(s(err) + ".")
        parts.append(rng.choice(["Thank you so much for your help!", "Thanks in advance.", "Many thanks!"]))
        text = " ".join(p for p in parts if p) + ("\n\n" + err if err_block else "")
    elif style == "angry":
        parts = [
            rng.choice(["This is RIDICULOUS.", "Seriously??", "I'm so done with this app."]),
            symptom.upper() + "!!!",
        ]
        parts += [s(env) + "." if env else "", *(s(d) + "!" for d in details)]
        if err and not err_block:
            parts.append(s(err))
        parts.append(rng.choice(["FIX IT.", "Fix this ASAP or I'm cancelling.", "Unacceptable for a paid product!"]))
        text = " ".join(p for p in parts if p) + ("\n" + err if err_block else "")
    elif style == "rambling":
        parts = [rng.choice(["So basically", "Ok so", "Not sure how to explain this but"]), symptom + ","]
        mix = [*details, *chatter, env] + ([err] if err and not err_block else [])
        rng.shuffle(mix)
        parts += [("and " if i else "anyway ") + m + "," for i, m in enumerate(x for x in mix if x)]
        text = " ".join(parts).rstrip(",") + ". " + rng.choice(["that's all I guess", "lmk if you need more", ""])
        text = text.strip() + ("\n" + err if err_block else "")
    elif style == "bullets":
        lines = [rng.choice(["Bug:", "Problem:", "Issue report"]), f"- what happens: {symptom}"]
        lines += [f"- env: {env}" if env else "", *(f"- {d}" for d in details), *(f"- {c}" for c in chatter)]
        if err and not err_block:
            lines.append(f"- {err}")
        text = "\n".join(x for x in lines if x) + ("\n" + err if err_block else "")
    elif style == "runon":
        mix = [symptom, env, *details, *chatter] + ([err] if err and not err_block else [])
        text = " and ".join(x for x in mix if x) + ("\n" + err if err_block else "")
    elif style == "email":  # held out from training
        name = rng.choice(NAMES)
        body = [f"I'm writing because {symptom}."] + ([s(env) + "."] if env else [])
        body += [s(d) + "." for d in details] + [s(c) + "." for c in chatter]
        if err and not err_block:
            body.append(s(err) + ".")
        text = (f"Subject: Problem with {PRODUCT}\n\nDear {PRODUCT} support,\n\n" + " ".join(body)
                + ("\n\n" + err if err_block else "") + f"\n\nKind regards,\n{name}")  # fmt: skip
    elif style == "tracker":  # held out from training
        lines = ["**Describe the bug**", s(symptom)]
        if f["repro"] or f["regression"]:
            lines += ["", "**When does it happen**", *(s(d) for d in (f["repro"], f["regression"]) if d)]
        if env:
            lines += ["", "**Environment**", *(f"- {e.strip()}" for e in env.split(" using "))]
        if err:
            lines += ["", "**Error output**", err if err_block else s(err)]
        extra = [x for x in (f["workaround"], *chatter) if x]
        if extra:
            lines += ["", "**Additional context**", *(s(x) for x in extra)]
        text = "\n".join(lines)
    else:
        raise ValueError(style)
    return text.strip()


def generate_rows(n: int, seed: int, held_out: bool) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        report, label = make_record(rng, held_out)
        rows.append({"input": report, "output": label})
    return rows


TASK_YAML = """# Bug reports -> JSON (generated by `tasktune example bug-reports`)
name: bug-reports
instruction: {instruction}
output:
  kind: json
  schema: schema.json
  free_text_fields: [title]   # scored by token F1; every other field by normalised exact match
metric: field_accuracy
data:
  train: train.jsonl
  eval: eval.jsonl
  test: test.jsonl
"""


@register("bug-reports")
def write_bug_reports(out: str | Path, n: int = 10000, seed: int = 0, n_eval: int = 300, n_test: int = 500) -> Path:
    """Write train/eval/test JSONL, schema.json and task.yaml for the bug-report task into `out`."""
    return write_splits(out, lambda split, k, s: generate_rows(k, s, held_out=split == "test"),
                        {"train": n, "eval": n_eval, "test": n_test}, seed,
                        {"schema.json": json.dumps(SCHEMA, indent=2, ensure_ascii=False) + "\n",
                         "task.yaml": TASK_YAML.format(instruction=json.dumps(INSTRUCTION))})  # fmt: skip
