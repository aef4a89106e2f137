"""The REST API under /api/ (Django REST framework, schema by drf-spectacular).

Views only check permissions, read and check input, and call the same model methods as the
admin and the console (`Job.pause`, `Schedule.save(actor=...)`, `orderactions.perform`...)
with an `Actor(user, "api", reason)`, so every change lands in the audit log.
"""
