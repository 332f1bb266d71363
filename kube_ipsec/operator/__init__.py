"""kube_ipsec.operator"""
