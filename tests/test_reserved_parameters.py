"""Parameters become a shell job's environment, so names such as PATH, LD_PRELOAD or
PYTHONPATH are refused at every door (admin, commands, models, run now) with a message that
names the parameter, and nothing is saved."""

from __future__ import annotations

import html
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from scheduler.models import ChainNode, Event, Job, JobChain, Order, Task
from tests.test_admin import job_form

MESSAGE = "would replace the node's own environment variable"


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "IFS",
                                  "BASH_ENV", "HOME", "OPSCENTER_TASK_ID", "GCONV_PATH",
                                  "GLIBC_TUNABLES", "PERL5OPT", "NODE_OPTIONS",
                                  "JAVA_TOOL_OPTIONS", "MALLOC_ARENA_MAX"])
def test_a_job_with_a_reserved_parameter_is_refused_in_the_admin(admin_client, cluster, name):
    response = admin_client.post(reverse("admin:scheduler_job_add"),
                                 job_form(cluster, parameters=f'{{"{name}": "/tmp/x"}}'))
    assert response.status_code == 200
    page = html.unescape(response.content.decode())
    assert f"Parameter '{name}' {MESSAGE}" in page
    assert not Job.objects.exists()


def test_ordinary_and_lower_case_names_are_still_parameters(cluster):
    job = Job(cluster=cluster, name="j", kind="shell", command="true",
              parameters={"path": "/data", "target": "db", "LDAP_HOST": "ldap"})
    job.full_clean()  # path is not PATH, LDAP_HOST is not LD_*


def test_run_now_with_a_reserved_parameter_is_refused_and_queues_nothing(shell_job):
    with pytest.raises(ValidationError, match=f"Parameter 'LD_PRELOAD' {MESSAGE}"):
        shell_job.run_now("tester", parameters={"LD_PRELOAD": "/tmp/evil.so"})
    assert not Task.objects.exists() and not Event.objects.exists()


@pytest.mark.parametrize("command", ["runjob", "addjob"])
def test_the_commands_refuse_a_reserved_parameter(shell_job, command):
    args = ["--cluster", "test", "echo"] if command == "runjob" else [
        "--cluster", "test", "another", "--shell", "true"]
    with pytest.raises(CommandError, match=f"--params: Parameter 'PATH' {MESSAGE}"):
        call_command(command, *args, "--params", '{"PATH": "/tmp"}', stdout=StringIO(),
                     stderr=StringIO())
    assert list(Job.objects.values_list("name", flat=True)) == ["echo"]
    assert not Task.objects.exists()


def test_a_task_or_an_order_with_a_reserved_parameter_is_refused(shell_job):
    task = Task(cluster=shell_job.cluster, job=shell_job, trigger="manual", state="queued",
                scheduled_for=shell_job.created_at, parameters={"SHELL": "/bin/evil"})
    with pytest.raises(ValidationError, match=f"Parameter 'SHELL' {MESSAGE}"):
        task.full_clean()
    chain = JobChain.objects.create(cluster=shell_job.cluster, name="etl")
    ChainNode.objects.create(chain=chain, position=0, state="start", job=shell_job,
                             next_state="done")
    ChainNode.objects.create(chain=chain, position=1, state="done")
    order = Order(chain=chain, order_id="o1", initial_state="start",
                  parameters={"PYTHONSTARTUP": "/tmp/x.py"})
    with pytest.raises(ValidationError, match=f"Parameter 'PYTHONSTARTUP' {MESSAGE}"):
        order.full_clean()
