"""`manage.py auditfires --cluster C [--since T] [--until T] [--job J] [--json]`: every fire the
schedules owed in a window, each with one verdict (scheduler/audit.py says how they are found).

Verdicts: ran, re-run, misfire (a misfire record of the schedule's policy, or "overlap skip":
a task skipped by the job's overlap policy), paused, not yet, behind (not reached yet: the
schedule's next fire is still at or before it), down (owed while the cluster is down: no
member has run since), MISSED, DOUBLE; tasks at times no definition produced are listed as
UNEXPECTED (not owed, not a failure). Only MISSED and DOUBLE are failures.

Output: a summary (counts per verdict, lateness p50/p99/max of first attempts, per member) and
a table of every fire that is not plainly `ran`. With --json: JSON Lines, written as the audit
goes, so memory stays flat on any ledger: a first line {"type": "audit", ...}, one line
{"type": "fire", ...} per fire (owed or UNEXPECTED, by schedule id and due time), and a last
line {"type": "summary", ...}.

Exit status: 0 when nothing is MISSED or DOUBLE (whatever else: behind, down, not yet are
not failures), 1 when something is, 2 on bad input.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from scheduler import audit as audits
from scheduler.clock import db_now
from scheduler.management.commands._common import (
    OperatorCommand,
    add_cluster_argument,
    get_cluster,
    get_jobs,
    print_table,
)

BAD_INPUT = 2
FOUND_PROBLEMS = 1
JSON_BATCH = 2000


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class Command(OperatorCommand):
    help = ("Audit the fires a cluster's schedules owed in a window against the task ledger "
            "and the event log. Verdicts: ran, re-run, misfire, paused, not yet, behind (not "
            "reached yet by the cluster), down (owed while no member runs), MISSED, DOUBLE; "
            "UNEXPECTED for tasks at times not owed. Exit status 0 when nothing is MISSED or "
            "DOUBLE, 1 when something is, 2 on bad input.")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("--since", default="1h", metavar="T",
                            help="Start of the window: ISO 8601 (no offset: the server's zone) "
                                 "or a time ago such as 30m, 1h, 24h, 7d (default 1h).")
        parser.add_argument("--until", default="now", metavar="T",
                            help="End of the window (exclusive), same forms (default now).")
        parser.add_argument("--job", metavar="JOB", help="Only this job's schedules.")
        parser.add_argument("--json", action="store_true",
                            help="Every fire as JSON Lines, then the summary.")

    def handle(self, *args, **options):
        try:
            cluster = get_cluster(options["cluster"])
            job = get_jobs(cluster, [options["job"]])[0] if options["job"] else None
            now = db_now()
            since = audits.parse_when(options["since"], now, "--since")
            until = audits.parse_when(options["until"], now, "--until")
            if since >= until:
                raise audits.AuditInputError(
                    f"--since ({audits.text_time(since)} UTC) must be before --until "
                    f"({audits.text_time(until)} UTC)")
        except CommandError as exc:
            raise CommandError(str(exc), returncode=BAD_INPUT) from None
        except audits.AuditInputError as exc:
            raise CommandError(str(exc), returncode=BAD_INPUT) from None

        if options["json"]:
            result = self.write_json(cluster, since, until, job, now)
        else:
            result = audits.audit(cluster, since, until, job=job, now=now)
            self.write_text(result)
        if result.failed:
            raise CommandError(
                f"audit failed: {result.counts[audits.MISSED]} MISSED, "
                f"{result.counts[audits.DOUBLE]} DOUBLE", returncode=FOUND_PROBLEMS)

    # -- JSON Lines, streamed

    def write_json(self, cluster, since, until, job, now):
        result, fires = audits.audit_stream(cluster, since, until, job=job, now=now)
        write = self.stdout.write
        write(json.dumps({"type": "audit", "cluster": cluster.name, "job": job.name if job
                          else None, "since": audits.iso(since), "until": audits.iso(until),
                          "audited_at": audits.iso(now)}))
        batch: list[str] = []
        for fire in fires:
            batch.append(json.dumps(fire.to_json()))
            if len(batch) >= JSON_BATCH:
                write("\n".join(batch))
                batch.clear()
        if batch:
            write("\n".join(batch))
        write(json.dumps(result.summary()))
        return result

    # -- for people

    def write_text(self, result) -> None:
        write = self.stdout.write
        write(f"Fire audit of cluster {result.cluster}: {audits.text_time(result.since)} to "
              f"{audits.text_time(result.until)} UTC (database clock; audited at "
              f"{audits.text_time(result.now)}), {result.schedules} schedule(s), "
              f"{result.owed} owed fire(s)")
        for warning in result.warnings:
            write(f"warning: {warning}")
        write("")
        rows = [[v, result.counts[v]] for v in audits.ALL_VERDICTS]
        print_table(write, ["verdict", "fires"], rows)
        late = result.lateness or {}
        write("")
        write(f"lateness of first attempts ({late.get('count', 0)} started), seconds: "
              f"p50 {seconds(late.get('p50'))}  p99 {seconds(late.get('p99'))}  "
              f"max {seconds(late.get('max'))}")
        if result.members:
            write("")
            print_table(write, ["member", "first attempts", "later attempts", "p50 s", "p99 s",
                           "max s"],
                   [[m["member"] or "-", m["first_attempts"], m["later_attempts"],
                     seconds(m["p50"]), seconds(m["p99"]), seconds(m["max"])]
                    for m in result.members])
        write("")
        shown = 0
        header = ["job", "schedule", "due (UTC)", "verdict", "member", "attempts", "late s",
                  "detail"]
        rows = []
        for fire in result.exceptions():
            rows.append([fire.job, fire.schedule_id, audits.text_time(fire.due), fire.verdict,
                         fire.member or "-", fire.attempts, seconds(fire.lateness),
                         fire.detail])
            shown += 1
            if len(rows) >= 10_000:  # print as we go: the column widths are per block
                print_table(write, header, rows)
                rows = []
        if rows:
            print_table(write, header, rows)
        if not shown:
            write("Every owed fire plainly ran.")
        write("")
        self.write_verdict(result)

    def write_verdict(self, result) -> None:
        """The last line: passed or failed, and what is owed but not lost."""
        counts = result.counts
        waiting = []
        if counts[audits.BEHIND]:
            waiting.append(f"{counts[audits.BEHIND]} fire(s) behind (not reached yet by the "
                           "cluster)")
        if counts[audits.DOWN]:
            waiting.append(f"{counts[audits.DOWN]} owed while the cluster was down (no member "
                           "has run since)")
        if counts[audits.NOT_YET]:
            waiting.append(f"{counts[audits.NOT_YET]} not yet due to have started")
        outcome = (f"FAILED: {counts[audits.MISSED]} MISSED, {counts[audits.DOUBLE]} DOUBLE"
                   if result.failed else "passed: nothing MISSED or DOUBLE")
        still = f"; still owed, not lost: {', '.join(waiting)}" if waiting else ""
        self.stdout.write(f"Audit {outcome}{still}.")

