"""kube_ipsec.agent"""
