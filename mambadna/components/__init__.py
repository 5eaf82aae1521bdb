"""Pieces shared by the tasks: device, checkpoints, schedules, data sampling."""
