"""Deterministic generator of realistic mail for benchmarks.

Every message is ``bytes`` with CRLF line endings and 7-bit headers: plain text,
multipart/alternative (text + html) and multipart/mixed with base64 attachments
(some with Chinese file names in RFC 2231 or RFC 2047 form), English and Chinese
subjects (``=?UTF-8?B?`` and ``=?GB2312?B?``) and display names.

Subject number ``i`` (0-based) contains :data:`SEARCH_WORD` exactly when
``i % SEARCH_PERIOD == SEARCH_OFFSET``, so :func:`search_hits` tells a SEARCH
benchmark how many hits to expect.

    generate(n, seed=1)           -> list[bytes]    (1,000 messages ~ 7.6 MB)
    iter_messages(n, seed, pool)  -> Iterator[bytes] (fast, for 100k mailboxes)
    fixed_size(size=4096, seed=1) -> bytes          (SMTP ingest payload)
"""

from __future__ import annotations

import base64
import quopri
import random
import textwrap
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

CRLF = "\r\n"
SEARCH_WORD = "季度报告"
SEARCH_PERIOD = 100
SEARCH_OFFSET = 37
DEFAULT_RCPT = "user1@example.test"

# ---------------------------------------------------------------- word banks
_EN_FIRST = ["James", "Mary", "Robert", "Linda", "Michael", "Susan", "David", "Karen",
             "Daniel", "Laura", "Paul", "Emily", "Mark", "Helen", "Steven", "Anna",
             "Kevin", "Grace", "Brian", "Olivia", "Thomas", "Rachel", "Peter", "Nora"]
_EN_LAST = ["Walker", "Bennett", "Hughes", "Foster", "Reed", "Coleman", "Hayes",
            "Porter", "Grant", "Fisher", "Marshall", "Palmer", "Warren", "Ellis",
            "Barker", "Lawson", "Holt", "Spencer", "Wheeler", "Hart"]
_CN_SURNAMES = [("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"),
                ("陈", "chen"), ("杨", "yang"), ("黄", "huang"), ("赵", "zhao"),
                ("吴", "wu"), ("周", "zhou"), ("徐", "xu"), ("孙", "sun"), ("马", "ma"),
                ("朱", "zhu"), ("胡", "hu"), ("郭", "guo"), ("何", "he"), ("林", "lin"),
                ("罗", "luo"), ("高", "gao")]
_CN_GIVEN = [("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"),
             ("强", "qiang"), ("磊", "lei"), ("军", "jun"), ("洋", "yang"), ("勇", "yong"),
             ("艳", "yan"), ("杰", "jie"), ("涛", "tao"), ("明", "ming"), ("超", "chao"),
             ("秀英", "xiuying"), ("晓东", "xiaodong"), ("海燕", "haiyan"),
             ("建国", "jianguo"), ("子涵", "zihan"), ("雨桐", "yutong"), ("志强", "zhiqiang")]
_EN_DOMAINS = ["bluepeak.example", "harbor-logistics.example", "northfield.example",
               "lumen-analytics.example", "example.com", "mail.example.org"]
_CN_DOMAINS = ["huaxin-tech.example", "dongfang-trade.example", "jinghua.example.cn",
               "163.example.cn", "qq.example.cn", "changjiang-bank.example"]
_LOCAL_DOMAIN = "example.test"

_EN_TOPICS = ["budget review", "vendor contract renewal", "onboarding schedule",
              "server migration plan", "customer escalation", "release notes 4.2",
              "travel reimbursement", "team offsite agenda", "security audit findings",
              "invoice #{n}", "shipment delay", "weekly status", "design review",
              "pricing proposal", "training session", "holiday coverage", "data retention policy"]
_EN_SUBJECTS = ["{t}", "Re: {t}", "RE: {t}", "Fwd: {t}", "Re: Re: {t}",
                "[Action required] {t}", "Quick question about the {t}",
                "Updated: {t} ({m})", "Minutes: {t}", "Reminder - {t} due {m}"]
_CN_TOPICS = ["项目进度", "预算审批", "合同续签", "年终总结", "培训安排", "客户反馈",
              "系统升级", "招聘计划", "采购申请", "会议室预订", "差旅报销", "产品发布",
              "服务器迁移", "安全检查", "市场调研", "供应商评估", "发票核对", "值班安排"]
_CN_SUBJECTS = ["关于{t}的通知", "回复：{t}", "转发：{t}", "{t}会议纪要", "【重要】{t}",
                "请审阅：{t}（第{k}版）", "{t}相关事宜", "答复: {t}", "{t}进展汇报",
                "{m}{t}安排"]
_HIT_SUBJECTS = ["第三{w}", "转发：华南区{w}", "回复：{w}数据核对", "{w}（初稿）",
                 "请审阅：{m}{w}", "【重要】{w}提交截止"]
_CN_MONTHS = ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月",
              "十月", "十一月", "十二月"]
_EN_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
              "Nov", "Dec"]

_EN_NOUNS = ["team", "customer", "schedule", "report", "budget", "server", "contract",
             "proposal", "deadline", "meeting", "invoice", "shipment", "release",
             "dashboard", "account", "quote", "warehouse", "ticket", "policy", "forecast"]
_EN_VERBS = ["reviewed", "updated", "approved", "moved", "confirmed", "shared",
             "postponed", "finalized", "checked", "escalated", "prepared", "signed"]
_EN_ADJ = ["revised", "quarterly", "pending", "new", "final", "internal", "draft",
           "urgent", "shared", "detailed", "previous", "regional"]
_EN_TAILS = ["before Friday", "as discussed yesterday", "for the next sprint",
             "with the finance team", "in the attached file", "by end of day",
             "after the call", "for your reference", "once legal signs off",
             "ahead of the board meeting"]
_CN_CLAUSES = ["请各部门按时提交材料", "相关负责人务必于本周五前确认", "如有疑问请随时与我联系",
               "附件中是最新版本的数据", "会议将在三楼会议室举行", "我们已经和客户沟通过",
               "预算需要财务部门进一步审核", "本次调整不影响现有业务", "请大家注意安全和时间安排",
               "具体细节见下方说明", "系统将于周末进行维护", "感谢各位的支持与配合",
               "上周的问题已经全部解决", "新版本会在下个月上线", "请在系统中完成审批流程",
               "目前项目整体进展顺利", "供应商已经确认了交货日期", "我们会尽快给出正式答复"]
_SIGN_EN = ["Best regards,", "Thanks,", "Kind regards,", "Cheers,"]
_SIGN_CN = ["此致敬礼", "谢谢！", "祝好", "顺颂商祺"]
_MAILERS = ["Microsoft Outlook 16.0", "Foxmail 7.2.25.228[cn]", "Apple Mail (2.3731)",
            "Mozilla Thunderbird 115.6", "Roundcube Webmail/1.6.5", None, None]

_ATTACH_TYPES = [  # (content type, extension, magic bytes)
    ("application/pdf", ".pdf", b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx",
     b"PK\x03\x04\x14\x00\x06\x00"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx",
     b"PK\x03\x04\x14\x00\x06\x00"),
    ("image/png", ".png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ("image/jpeg", ".jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
    ("application/zip", ".zip", b"PK\x03\x04\x0a\x00\x00\x00"),
]
_EN_FILES = ["report_final", "contract_v2", "meeting_notes", "invoice_2024", "photo",
             "slides", "budget_sheet", "architecture", "scan_0042"]
_CN_FILES = ["项目进度表", "合同草案（第二版）", "会议纪要", "报价单", "培训材料",
             "年度预算", "产品说明书", "发票扫描件"]

_BASE_DATE = datetime(2024, 1, 2, 8, 0, tzinfo=timezone(timedelta(hours=8)))
_ZONES = [timezone(timedelta(hours=8))] * 6 + [UTC, timezone(timedelta(hours=-5))]


# ---------------------------------------------------------------- encoders
def encoded_words(text: str, charset: str = "UTF-8", limit: int = 75) -> str:
    """RFC 2047 B-encode ``text``; split on character boundaries, folded with CRLF SP."""
    codec = charset.lower()
    overhead = len(charset) + 7  # =?cs?B??=
    words: list[str] = []
    chunk = ""
    for ch in text:
        raw = (chunk + ch).encode(codec)
        if chunk and overhead + 4 * ((len(raw) + 2) // 3) > limit:
            words.append(chunk)
            chunk = ch
        else:
            chunk += ch
    words.append(chunk)
    return (CRLF + " ").join(
        f"=?{charset}?B?{base64.b64encode(w.encode(codec)).decode()}?=" for w in words)


def _b64_body(data: bytes) -> str:
    enc = base64.b64encode(data).decode()
    return CRLF.join(enc[i:i + 76] for i in range(0, len(enc), 76)) + CRLF


def _qp_body(text: str, charset: str) -> str:
    enc = quopri.encodestring(text.replace(CRLF, "\n").encode(charset)).decode()
    return enc.replace("\n", CRLF) + ("" if enc.endswith("\n") else CRLF)


def _rfc2231(param: str, value: str) -> str:
    """``filename*=UTF-8''...`` or, when long, ``filename*0*=...; filename*1*=...``."""
    quoted = urllib.parse.quote(value.encode(), safe="")
    if len(quoted) <= 60:
        return f"{param}*=UTF-8''{quoted}"
    parts = []
    pos = 0
    while pos < len(quoted):
        end = min(pos + 60, len(quoted))
        while end < len(quoted) and "%" in quoted[end - 2:end]:
            end -= 1  # do not cut a %XX escape
        parts.append(quoted[pos:end])
        pos = end
    parts[0] = "UTF-8''" + parts[0]
    return (";" + CRLF + "\t").join(f"{param}*{k}*={p}" for k, p in enumerate(parts))


# ---------------------------------------------------------------- people & text
def _person(rng: random.Random, chinese: bool) -> tuple[str, str, str]:
    """(display name, the name as header text, address)."""
    if chinese:
        (sn, sp), (gn, gp) = rng.choice(_CN_SURNAMES), rng.choice(_CN_GIVEN)
        addr = f"{sp}.{gp}@{rng.choice(_CN_DOMAINS)}"
        return sn + gn, encoded_words(sn + gn, rng.choice(["UTF-8", "UTF-8", "GB2312"])), addr
    first, last = rng.choice(_EN_FIRST), rng.choice(_EN_LAST)
    addr = f"{first.lower()}.{last.lower()}@{rng.choice(_EN_DOMAINS)}"
    quoted = f'"{last}, {first}"' if rng.random() < 0.2 else f"{first} {last}"
    return f"{first} {last}", quoted, addr


def _en_paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 6)):
        sentences.append(
            f"The {rng.choice(_EN_ADJ)} {rng.choice(_EN_NOUNS)} was {rng.choice(_EN_VERBS)} "
            f"{rng.choice(_EN_TAILS)}, and the {rng.choice(_EN_NOUNS)} "
            f"{rng.choice(_EN_VERBS)} {rng.choice(_EN_TAILS)}.")
    return " ".join(sentences)


def _cn_paragraph(rng: random.Random) -> str:
    return "，".join(rng.choice(_CN_CLAUSES) for _ in range(rng.randint(2, 5))) + "。"


def _paragraphs(rng: random.Random, chinese: bool, size: int) -> list[str]:
    """Paragraphs totalling about ``size`` encoded bytes."""
    out: list[str] = []
    total = 0
    while total < size:
        p = _cn_paragraph(rng) if chinese else _en_paragraph(rng)
        out.append(p)
        total += len(p.encode()) + 2
    return out


def _plain_text(rng: random.Random, chinese: bool, size: int, sender: str) -> str:
    paras = _paragraphs(rng, chinese, size)
    greeting = "各位好：" if chinese else rng.choice(["Hi all,", "Hello,", "Dear team,"])
    lines = [greeting, ""]
    for p in paras:
        lines += (textwrap.wrap(p, 36) if chinese else textwrap.wrap(p, 72)) + [""]
    lines += [rng.choice(_SIGN_CN if chinese else _SIGN_EN), sender]
    if rng.random() < 0.3:  # quoted earlier message
        lines += ["", "> " + ("原始邮件" if chinese else "-----Original Message-----")]
        lines += ["> " + ln for ln in textwrap.wrap(_en_paragraph(rng), 70)]
    return CRLF.join(lines) + CRLF


def _html(text: str, charset: str) -> str:
    paras = "".join(f'<p style="margin:0 0 8px 0">{p.replace(CRLF, " ")}</p>{CRLF}'
                    for p in text.split(CRLF * 2))
    return (f'<html><head><meta http-equiv="Content-Type" content="text/html; charset={charset}">'
            f'</head>{CRLF}<body><div style="font-family:Calibri,sans-serif;font-size:11pt">'
            f"{CRLF}{paras}</div></body></html>{CRLF}")


# ---------------------------------------------------------------- MIME parts
Part = tuple[list[str], str]  # (header lines, encoded body with CRLF endings)


def _text_part(rng: random.Random, text: str, chinese: bool, subtype: str = "plain") -> Part:
    if not chinese:
        if subtype == "html" or rng.random() < 0.3:
            return ([f"Content-Type: text/{subtype}; charset=us-ascii",
                     "Content-Transfer-Encoding: quoted-printable"], _qp_body(text, "ascii"))
        return ([f"Content-Type: text/{subtype}; charset=us-ascii",
                 "Content-Transfer-Encoding: 7bit"], text)
    choice = rng.random()
    if choice < 0.45:
        charset, cte = "utf-8", "base64"
    elif choice < 0.7:
        charset, cte = "gb2312", "base64"
    elif choice < 0.85:
        charset, cte = "utf-8", "8bit"
    else:
        charset, cte = "utf-8", "quoted-printable"
    if subtype == "html":
        text = text.replace("charset=utf-8", f"charset={charset}")
    headers = [f"Content-Type: text/{subtype}; charset={charset}",
               f"Content-Transfer-Encoding: {cte}"]
    if cte == "base64":
        return headers, _b64_body(text.encode(charset))
    if cte == "quoted-printable":
        return headers, _qp_body(text, charset)
    return headers, text


def _attachment_size(rng: random.Random, large: bool) -> int:
    if large:
        return rng.randint(36_000, 130_000)  # 50-180 KB once base64-encoded
    return int(min(20_000, rng.lognormvariate(7.9, 0.7)))


def _attachment(rng: random.Random, large: bool = False) -> Part:
    ctype, ext, magic = rng.choice(_ATTACH_TYPES)
    data = magic + rng.randbytes(max(0, _attachment_size(rng, large) - len(magic)))
    style = rng.random()
    if style < 0.45:  # plain ASCII name
        name = rng.choice(_EN_FILES) + ext
        ct_name, cd_name = f'name="{name}"', f'filename="{name}"'
    else:
        name = rng.choice(_CN_FILES) + ext
        if style < 0.75:  # RFC 2231 filename, RFC 2047 name (Outlook/Thunderbird style)
            ct_name = f'name="{encoded_words(name)}"'
            cd_name = _rfc2231("filename", name)
        else:  # RFC 2047 in both (Foxmail style), sometimes GB2312
            cs = rng.choice(["UTF-8", "GB2312"])
            ct_name = f'name="{encoded_words(name, cs)}"'
            cd_name = f'filename="{encoded_words(name, cs)}"'
    headers = [f"Content-Type: {ctype};" + CRLF + f"\t{ct_name}",
               "Content-Transfer-Encoding: base64",
               "Content-Disposition: attachment;" + CRLF + f"\t{cd_name}"]
    return headers, _b64_body(data)


def _boundary(rng: random.Random) -> str:
    return f"----=_Part_{rng.randrange(10**6)}_{rng.getrandbits(40):010x}"


def _multipart(rng: random.Random, subtype: str, parts: list[Part]) -> Part:
    b = _boundary(rng)
    body = ["This is a multi-part message in MIME format.", ""] if subtype == "mixed" else [""]
    text = CRLF.join(body) + CRLF
    for headers, content in parts:
        text += f"--{b}{CRLF}" + CRLF.join(headers) + CRLF + CRLF + content
    text += f"--{b}--{CRLF}"
    return [f'Content-Type: multipart/{subtype};{CRLF}\tboundary="{b}"'], text


def _body_size(rng: random.Random) -> int:
    return int(min(40_000, max(300, rng.lognormvariate(7.2, 0.6))))


def _mime_body(rng: random.Random, chinese: bool, sender: str, depth: int = 0) -> Part:
    """Content headers + body of one message (recursive for message/rfc822)."""
    text = _plain_text(rng, chinese, _body_size(rng), sender)
    kind = rng.random()
    if kind < 0.40:
        return _text_part(rng, text, chinese)
    alt = _multipart(rng, "alternative", [
        _text_part(rng, text, chinese),
        _text_part(rng, _html(text, "utf-8" if chinese else "us-ascii"), chinese, "html")])
    if kind < 0.78:
        return alt
    parts = [alt if rng.random() < 0.6 else _text_part(rng, text, chinese)]
    if depth == 0 and rng.random() < 0.05:  # one big attachment
        parts.append(_attachment(rng, large=True))
    else:
        parts += [_attachment(rng) for _ in range(rng.choice([1, 1, 1, 1, 2, 3]))]
    if depth == 0 and rng.random() < 0.08:  # forwarded message as attachment
        inner, _ = _top_headers(rng, SEARCH_PERIOD * rng.randrange(10**4), DEFAULT_RCPT,
                                _BASE_DATE, chinese)
        ih, ib = _mime_body(rng, chinese, sender, depth + 1)
        parts.append((["Content-Type: message/rfc822", "Content-Disposition: attachment"],
                      CRLF.join(inner + ih) + CRLF + CRLF + ib))
    return _multipart(rng, "mixed", parts)


# ---------------------------------------------------------------- headers
def _subject(rng: random.Random, i: int, chinese: bool) -> str:
    if i % SEARCH_PERIOD == SEARCH_OFFSET:
        text = rng.choice(_HIT_SUBJECTS).format(w=SEARCH_WORD, m=rng.choice(_CN_MONTHS))
        return encoded_words(text, "UTF-8" if (i // SEARCH_PERIOD) % 2 else "GB2312")
    if chinese:
        text = rng.choice(_CN_SUBJECTS).format(
            t=rng.choice(_CN_TOPICS), k=rng.randint(2, 5), m=rng.choice(_CN_MONTHS))
        return encoded_words(text, rng.choice(["UTF-8", "UTF-8", "GB2312"]))
    topic = rng.choice(_EN_TOPICS).format(n=rng.randint(1000, 99999))
    return rng.choice(_EN_SUBJECTS).format(t=topic, m=rng.choice(_EN_MONTHS))


def _top_headers(rng: random.Random, i: int, rcpt: str, date: datetime,
                 chinese: bool) -> tuple[list[str], str]:
    """Envelope-ish headers up to MIME-Version, and the sender's display name."""
    sender, name, addr = _person(rng, chinese)
    domain = addr.split("@")[1]
    when = date.astimezone(rng.choice(_ZONES))
    stamp = when.strftime("%a, %d %b %Y %H:%M:%S %z")
    ip = f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(2, 250)}"
    msgid = f"<{rng.getrandbits(64):016x}.{i}@{domain}>"
    lines = [
        f"Return-Path: <{addr}>",
        f"Received: from mail.{domain} (mail.{domain} [{ip}]){CRLF}\tby mx.{_LOCAL_DOMAIN} "
        f"with ESMTPS id {rng.getrandbits(48):012X}{CRLF}\tfor <{rcpt}>; {stamp}",
        f"Received: from [10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}] "
        f"by mail.{domain} with ESMTPSA;{CRLF}\t{stamp}",
        f"Date: {stamp}",
        f"From: {name} <{addr}>",
        f"To: {rcpt}",
    ]
    if rng.random() < 0.3:
        cc = [_person(rng, rng.random() < 0.5) for _ in range(rng.randint(1, 3))]
        lines.append("Cc: " + ("," + CRLF + "\t").join(f"{n} <{a}>" for _, n, a in cc))
    subject = _subject(rng, i, chinese)
    lines += [f"Subject: {subject}", f"Message-ID: {msgid}"]
    if "Re" in subject[:3] or rng.random() < 0.15:
        ref = f"<{rng.getrandbits(64):016x}@{domain}>"
        lines += [f"In-Reply-To: {ref}", f"References: {ref}"]
    mailer = rng.choice(_MAILERS)
    if mailer:
        lines.append(f"X-Mailer: {mailer}")
    lines.append("MIME-Version: 1.0")
    return lines, sender


def _assemble(top: list[str], content: Part) -> bytes:
    headers, body = content
    return (CRLF.join(top + headers) + CRLF + CRLF + body).encode()


# ---------------------------------------------------------------- public API
def search_hits(n: int) -> int:
    """How many of the first ``n`` generated subjects contain SEARCH_WORD."""
    return sum(1 for i in range(n) if i % SEARCH_PERIOD == SEARCH_OFFSET)


def generate(n: int, seed: int = 1, rcpt: str = DEFAULT_RCPT) -> list[bytes]:
    """``n`` distinct realistic messages, identical for identical (n, seed, rcpt)."""
    rng = random.Random(seed)
    date = _BASE_DATE
    out = []
    for i in range(n):
        chinese = rng.random() < 0.55
        date += timedelta(seconds=rng.randint(30, 3600))
        top, sender = _top_headers(rng, i, rcpt, date, chinese)
        out.append(_assemble(top, _mime_body(rng, chinese, sender)))
    return out


def iter_messages(n: int, seed: int = 1, pool: int = 300,
                  rcpt: str = DEFAULT_RCPT) -> Iterator[bytes]:
    """``n`` messages quickly: fresh top headers (Subject, Date, Message-ID, ...)
    over a pool of ``pool`` generated MIME bodies. Same SEARCH_WORD rule."""
    rng = random.Random(seed)
    bodies = [_mime_body(rng, k % 2 == 0, "Team") for k in range(pool)]
    date = _BASE_DATE
    for i in range(n):
        date += timedelta(seconds=rng.randint(5, 600))
        k = rng.randrange(pool)
        yield _assemble(_top_headers(rng, i, rcpt, date, k % 2 == 0)[0], bodies[k])


def fixed_size(size: int = 4096, seed: int = 1, rcpt: str = DEFAULT_RCPT) -> bytes:
    """A plain-text message of exactly ``size`` bytes (CRLF endings)."""
    rng = random.Random(seed)
    head = CRLF.join([
        "From: Bench Sender <bench@example.test>", f"To: {rcpt}",
        "Subject: SMTP ingest benchmark", _BASE_DATE.strftime("Date: %a, %d %b %Y %H:%M:%S %z"),
        f"Message-ID: <{rng.getrandbits(64):016x}@example.test>", "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii"]) + CRLF + CRLF
    room = size - len(head)  # body bytes, CRLFs included
    if room < 2:
        raise ValueError(f"size must be at least {len(head) + 2}")
    lines: list[str] = []
    pending: list[str] = []
    while True:
        if not pending:
            pending = textwrap.wrap(_en_paragraph(rng), 72)
        if room - (len(pending[0]) + 2) < 2:  # last line: exactly what is left
            lines.append(" ".join(pending)[: room - 2].rstrip().ljust(room - 2, "."))
            break
        room -= len(pending[0]) + 2
        lines.append(pending.pop(0))
    return (head + CRLF.join(lines) + CRLF).encode()
