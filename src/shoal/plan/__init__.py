"""`shoal plan` and `shoal calibrate`: a cost model that predicts step time and memory of every layout on a cluster."""

from shoal.plan.command import plan_command, plan_for
from shoal.plan.cost import Layout, Prediction, Sync, predict
from shoal.plan.hardware import Cluster, Device, Network, load_cluster, preset
from shoal.plan.search import Plan, make_plan
from shoal.plan.shapes import ModelShape

__all__ = ["Cluster", "Device", "Layout", "ModelShape", "Network", "Plan", "Prediction", "Sync", "load_cluster", "make_plan",
           "plan_command", "plan_for", "predict", "preset"]
