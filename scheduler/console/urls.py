from __future__ import annotations

from django.urls import path

from scheduler.console.views import account, audit, chains, cluster, dashboard, jobs, tasks

app_name = "console"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("login/", account.LoginView.as_view(), name="login"),
    path("logout/", account.LogoutView.as_view(), name="logout"),
    path("preferences/", account.preferences, name="preferences"),
    # The cluster tab.
    path("clusters/", cluster.clusters, name="clusters"),
    path("clusters/<int:cluster_id>/", cluster.cluster, name="cluster"),
    path("clusters/<int:cluster_id>/switchover/", cluster.switchover, name="switchover"),
    # Jobs.
    path("jobs/", jobs.jobs, name="jobs"),
    path("jobs/actions/", jobs.job_actions, name="job_actions"),
    path("jobs/<int:job_id>/", jobs.job, name="job"),
    # Tasks and their logs.
    path("tasks/", tasks.tasks, name="tasks"),
    path("tasks/<int:task_id>/", tasks.task, name="task"),
    path("tasks/<int:task_id>/log/", tasks.task_log, name="task_log"),
    path("tasks/<int:task_id>/log/download/", tasks.task_log_download, name="task_log_download"),
    path("tasks/<int:task_id>/cancel/", tasks.task_cancel, name="task_cancel"),
    # Job chains and orders.
    path("chains/", chains.chains, name="chains"),
    path("chains/<int:chain_id>/", chains.chain, name="chain"),
    path("chains/<int:chain_id>/action/", chains.chain_action, name="chain_action"),
    path("chains/<int:chain_id>/nodes/<int:node_id>/action/", chains.node_action,
         name="node_action"),
    path("chains/<int:chain_id>/orders/add/", chains.add_order, name="add_order"),
    path("orders/<int:order_id>/", chains.order, name="order"),
    path("orders/<int:order_id>/action/", chains.order_action, name="order_action"),
    # The audit log of operator actions.
    path("audit/", audit.audit, name="audit"),
]
